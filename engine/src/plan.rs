//! Placement planning: which NUMA node and cores each SOC gets, and which CPU
//! each of its workers is pinned to.
//!
//! Planning is pure: it works on a [`Topology`] value and never calls hwloc, so
//! plans for synthetic topologies can be computed and shown anywhere.
//!
//! Rules:
//! - the SOC count defaults to the number of NUMA nodes (with cores);
//! - with no more SOCs than nodes, SOC `i` gets node `i` (in OS-index order)
//!   and all its cores; unused nodes are noted;
//! - with more SOCs than nodes, SOCs are spread over nodes as evenly as possible
//!   (the first nodes get the extra ones, SOCs numbered in node order) and each
//!   node's cores are split into contiguous, as-even-as-possible chunks; when a
//!   node has fewer cores than SOCs, its SOCs get one core each, round-robin, and
//!   therefore share cores;
//! - workers per SOC default to the SOC's cpu count; worker `w` is pinned to
//!   `cpus[w % cpus.len()]`, where a cpu is the first PU of a core.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::topology::Topology;

/// Largest number of workers (over all SOCs) a plan may contain; also bounds
/// the number of SOCs, since every SOC has at least one worker.
const MAX_WORKERS: usize = 65_536;

/// Width the text produced by [`Plan::to_table`] is wrapped to.
const TABLE_WIDTH: usize = 80;

/// What to plan for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PlanRequest {
    /// Number of SOCs; `None` = one per NUMA node.
    pub socs: Option<usize>,
    /// Workers per SOC; `None` = the number of cores the SOC gets.
    pub workers_per_soc: Option<usize>,
}

/// A placement of SOCs and their workers onto a topology.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Plan {
    /// One entry per SOC, in SOC order.
    pub socs: Vec<SocPlan>,
    /// Whether workers will really be bound (= `topology.binding_supported`).
    pub binding: bool,
    /// Human sentences explaining anything noteworthy: a synthetic topology or
    /// unsupported binding (plan only), SOCs splitting a node, SOCs sharing
    /// cores, oversubscription (more workers than cpus), unused nodes.
    pub notes: Vec<String>,
    /// Number of NUMA nodes with cores in the topology.
    pub nodes: usize,
    /// Number of cores in the topology.
    pub cores: usize,
    /// The topology's `synthetic` description (`None` for this machine).
    pub synthetic: Option<String>,
}

/// The placement of one SOC.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SocPlan {
    /// SOC number, starting at 0.
    pub soc: usize,
    /// OS index of the NUMA node the SOC runs on.
    pub node: u32,
    /// OS indexes of the cores' first PUs given to this SOC.
    pub cpus: Vec<u32>,
    /// The SOC's workers, in worker order.
    pub workers: Vec<WorkerPlan>,
    /// More workers than cpus.
    pub oversubscribed: bool,
}

/// The placement of one worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct WorkerPlan {
    /// Worker number within its SOC, starting at 0.
    pub worker: usize,
    /// OS index of the PU the worker is pinned to (the first PU of its core).
    pub cpu: u32,
}

/// Why no plan could be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PlanError {
    /// Zero SOCs were requested.
    #[error("the number of SOCs must be at least 1, got 0")]
    ZeroSocs,
    /// Zero workers per SOC were requested.
    #[error("the number of workers per SOC must be at least 1, got 0")]
    ZeroWorkers,
    /// The topology has no core to place anything on.
    #[error("the topology has no NUMA node with cores, so there is nowhere to place workers")]
    NoCores,
    /// More SOCs were requested than a plan may contain.
    #[error("{requested} SOCs requested, but at most {max} are supported")]
    TooManySocs {
        /// The requested SOC count.
        requested: usize,
        /// The limit (65,536).
        max: usize,
    },
    /// The plan would contain more workers than supported.
    #[error("the plan would have {requested} workers in total, but at most {max} are supported")]
    TooManyWorkers {
        /// Total number of workers requested (saturating).
        requested: usize,
        /// The limit (65,536).
        max: usize,
    },
}

/// A node's OS index and its usable cpus (first PU of each core), in core order.
struct NodeCpus {
    os_index: u32,
    cpus: Vec<u32>,
}

/// Plans the placement of SOCs and workers on `topology`.
///
/// # Errors
///
/// [`PlanError::ZeroSocs`] / [`PlanError::ZeroWorkers`] for a request of zero,
/// [`PlanError::NoCores`] for a topology without cores,
/// [`PlanError::TooManySocs`] / [`PlanError::TooManyWorkers`] beyond
/// 65,536.
pub fn plan(topology: &Topology, request: &PlanRequest) -> Result<Plan, PlanError> {
    let mut nodes: Vec<NodeCpus> = topology
        .nodes
        .iter()
        .map(|n| NodeCpus {
            os_index: n.os_index,
            cpus: n
                .cores
                .iter()
                .filter_map(|c| c.pus.iter().min().copied())
                .collect(),
        })
        .filter(|n| !n.cpus.is_empty())
        .collect();
    nodes.sort_by_key(|n| n.os_index);
    if nodes.is_empty() {
        return Err(PlanError::NoCores);
    }
    let node_count = nodes.len();
    let core_count: usize = nodes.iter().map(|n| n.cpus.len()).sum();

    let soc_count = request.socs.unwrap_or(node_count);
    if soc_count == 0 {
        return Err(PlanError::ZeroSocs);
    }
    if request.workers_per_soc == Some(0) {
        return Err(PlanError::ZeroWorkers);
    }
    if soc_count > MAX_WORKERS {
        return Err(PlanError::TooManySocs {
            requested: soc_count,
            max: MAX_WORKERS,
        });
    }

    let mut notes = Vec::new();
    if let Some(desc) = &topology.synthetic {
        notes.push(format!(
            "synthetic topology ({desc}): this is a plan only; workers will not be bound"
        ));
    } else if !topology.binding_supported {
        notes.push(
            "hwloc reports that CPU binding is not supported on this system: \
             this is a plan only; workers will not be bound"
                .to_owned(),
        );
    }

    // (node OS index, cpus) for each SOC, in SOC order.
    let assignments = if soc_count <= node_count {
        assign_whole_nodes(&nodes, soc_count, &mut notes)
    } else {
        assign_split_nodes(&nodes, soc_count, &mut notes)
    };

    // Check the total before allocating any worker.
    let total_workers = assignments.iter().fold(0usize, |acc, (_, cpus)| {
        acc.saturating_add(request.workers_per_soc.unwrap_or(cpus.len()))
    });
    if total_workers > MAX_WORKERS {
        return Err(PlanError::TooManyWorkers {
            requested: total_workers,
            max: MAX_WORKERS,
        });
    }

    let mut oversubscribed: Vec<String> = Vec::new();
    let socs: Vec<SocPlan> = assignments
        .into_iter()
        .enumerate()
        .map(|(soc, (node, cpus))| {
            let count = request.workers_per_soc.unwrap_or(cpus.len());
            let workers: Vec<WorkerPlan> = (0..count)
                .map(|worker| WorkerPlan {
                    worker,
                    // `cpus` is never empty: nodes without cpus are dropped
                    // above and every chunk or share holds at least one cpu.
                    cpu: cpus[worker % cpus.len()],
                })
                .collect();
            let over = count > cpus.len();
            if over {
                oversubscribed.push(format!(
                    "SOC {soc} has {count} workers on {} cpu{}",
                    cpus.len(),
                    plural(cpus.len())
                ));
            }
            SocPlan {
                soc,
                node,
                cpus,
                workers,
                oversubscribed: over,
            }
        })
        .collect();
    if !oversubscribed.is_empty() {
        notes.push(format!(
            "oversubscribed (more workers than cpus, workers share cpus round-robin): {}",
            oversubscribed.join("; ")
        ));
    }

    Ok(Plan {
        socs,
        binding: topology.binding_supported,
        notes,
        nodes: node_count,
        cores: core_count,
        synthetic: topology.synthetic.clone(),
    })
}

/// SOC `i` gets node `i` and all its cpus (`soc_count <= nodes.len()`); the
/// remaining nodes are noted as unused.
fn assign_whole_nodes(
    nodes: &[NodeCpus],
    soc_count: usize,
    notes: &mut Vec<String>,
) -> Vec<(u32, Vec<u32>)> {
    let (used, unused) = nodes.split_at(soc_count.min(nodes.len()));
    if !unused.is_empty() {
        let list: Vec<String> = unused.iter().map(|n| n.os_index.to_string()).collect();
        let (noun, verb) = if list.len() == 1 {
            ("node", "is")
        } else {
            ("nodes", "are")
        };
        notes.push(format!(
            "only {soc_count} SOC{} for {} NUMA nodes: {noun} {} {verb} unused",
            plural(soc_count),
            nodes.len(),
            list.join(", ")
        ));
    }
    used.iter().map(|n| (n.os_index, n.cpus.clone())).collect()
}

/// Spreads `soc_count > nodes.len()` SOCs over the nodes as evenly as
/// possible (first nodes get the extra ones) and splits each node's cpus into
/// contiguous chunks; a node with fewer cpus than SOCs gives its SOCs one cpu
/// each, round-robin. Splitting and sharing are noted.
fn assign_split_nodes(
    nodes: &[NodeCpus],
    soc_count: usize,
    notes: &mut Vec<String>,
) -> Vec<(u32, Vec<u32>)> {
    let node_count = nodes.len();
    let mut assignments: Vec<(u32, Vec<u32>)> = Vec::with_capacity(soc_count);
    let base = soc_count / node_count;
    let extra = soc_count % node_count;
    let mut split: Vec<String> = Vec::new();
    for (j, node) in nodes.iter().enumerate() {
        let k = base + usize::from(j < extra);
        let first_soc = assignments.len();
        let c = node.cpus.len();
        if c >= k {
            let sizes = even_split(c, k);
            let mut rest = node.cpus.as_slice();
            for &size in &sizes {
                let (chunk, tail) = rest.split_at(size.min(rest.len()));
                assignments.push((node.os_index, chunk.to_vec()));
                rest = tail;
            }
            if k > 1 {
                let sizes: Vec<String> = sizes.iter().map(usize::to_string).collect();
                split.push(format!(
                    "node {}: SOCs {} ({} cpus)",
                    node.os_index,
                    span(first_soc, first_soc + k - 1),
                    sizes.join("+")
                ));
            }
        } else {
            let mut sharers: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
            for (t, &cpu) in (0..k).zip(node.cpus.iter().cycle()) {
                assignments.push((node.os_index, vec![cpu]));
                sharers.entry(cpu).or_default().push(first_soc + t);
            }
            let detail: Vec<String> = sharers
                .iter()
                .map(|(cpu, socs)| {
                    let list: Vec<String> = socs.iter().map(usize::to_string).collect();
                    format!("cpu {cpu}: SOC{} {}", plural(socs.len()), list.join(", "))
                })
                .collect();
            notes.push(format!(
                "node {} has only {c} core{} for {k} SOCs, so SOCs share cores \
                 round-robin ({})",
                node.os_index,
                plural(c),
                detail.join("; ")
            ));
        }
    }
    if !split.is_empty() {
        notes.push(format!(
            "{soc_count} SOCs on {node_count} NUMA node{}: nodes are split into \
             contiguous cpu ranges ({})",
            plural(node_count),
            split.join("; ")
        ));
    }
    assignments
}

impl Plan {
    /// A human-readable table: one line per SOC (soc, node, cpus, workers),
    /// then the worker→cpu mapping compactly, then the notes, and a line saying
    /// `binding: yes` or `binding: no (<why>)`. Lines are wrapped to 80 columns
    /// where they can be.
    #[must_use]
    pub fn to_table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{} SOC{} on {} NUMA node{} ({} core{}), {} worker{}",
            self.socs.len(),
            plural(self.socs.len()),
            self.nodes,
            plural(self.nodes),
            self.cores,
            plural(self.cores),
            self.worker_count(),
            plural(self.worker_count()),
        );

        let cpu_lists: Vec<String> = self.socs.iter().map(|s| cpu_ranges(&s.cpus)).collect();
        let soc_w = self
            .socs
            .iter()
            .map(|s| s.soc.to_string().len())
            .chain([3])
            .max()
            .unwrap_or(3);
        let node_w = self
            .socs
            .iter()
            .map(|s| s.node.to_string().len())
            .chain([4])
            .max()
            .unwrap_or(4);
        let cpus_w = cpu_lists
            .iter()
            .map(String::len)
            .chain([4])
            .max()
            .unwrap_or(4);
        let _ = writeln!(
            out,
            "{:>soc_w$}  {:>node_w$}  {:<cpus_w$}  WORKERS",
            "SOC", "NODE", "CPUS"
        );
        for (s, cpus) in self.socs.iter().zip(&cpu_lists) {
            let workers = if s.oversubscribed {
                format!("{} (oversubscribed)", s.workers.len())
            } else {
                s.workers.len().to_string()
            };
            let _ = writeln!(
                out,
                "{:>soc_w$}  {:>node_w$}  {:<cpus_w$}  {workers}",
                s.soc, s.node, cpus
            );
        }

        out.push_str("worker->cpu:\n");
        let num_w = self
            .socs
            .iter()
            .map(|s| s.soc.to_string().len())
            .max()
            .unwrap_or(1);
        for s in &self.socs {
            let prefix = format!("  soc {:>num_w$}:", s.soc);
            let indent = " ".repeat(prefix.len());
            let tokens: Vec<String> = s
                .workers
                .iter()
                .map(|w| format!("{}->{}", w.worker, w.cpu))
                .collect();
            wrap_into(
                &mut out,
                &prefix,
                &indent,
                tokens.iter().map(String::as_str),
            );
        }

        if !self.notes.is_empty() {
            out.push_str("notes:\n");
            for note in &self.notes {
                wrap_into(&mut out, "  -", "   ", note.split_whitespace());
            }
        }

        if self.binding {
            out.push_str("binding: yes\n");
        } else if self.synthetic.is_some() {
            out.push_str("binding: no (synthetic topology; plan only)\n");
        } else {
            out.push_str("binding: no (hwloc reports CPU binding unsupported here)\n");
        }
        out
    }

    /// Total number of workers over all SOCs.
    #[must_use]
    pub fn worker_count(&self) -> usize {
        self.socs.iter().map(|s| s.workers.len()).sum()
    }
}

/// `"s"` unless `n == 1`.
fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

/// `"a"` or `"a-b"`.
fn span(a: usize, b: usize) -> String {
    if a == b {
        a.to_string()
    } else {
        format!("{a}-{b}")
    }
}

/// Splits `total` items into `parts` (> 0) contiguous chunk sizes differing by
/// at most one, larger chunks first.
fn even_split(total: usize, parts: usize) -> Vec<usize> {
    let base = total / parts;
    let extra = total % parts;
    (0..parts).map(|i| base + usize::from(i < extra)).collect()
}

/// Compact cpu list in the given order: runs of consecutive ascending values
/// become `a-b`, e.g. `[0, 1, 2, 3, 8]` → `"0-3,8"`.
fn cpu_ranges(cpus: &[u32]) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut i = 0;
    while i < cpus.len() {
        let start = cpus[i];
        let mut end = start;
        let mut j = i + 1;
        while j < cpus.len() && end.checked_add(1) == Some(cpus[j]) {
            end = cpus[j];
            j += 1;
        }
        parts.push(if end == start {
            start.to_string()
        } else {
            format!("{start}-{end}")
        });
        i = j;
    }
    parts.join(",")
}

/// Appends `first_prefix` followed by the space-separated `tokens`, wrapping to
/// [`TABLE_WIDTH`] columns with continuation lines starting with `indent`.
fn wrap_into<'a>(
    out: &mut String,
    first_prefix: &str,
    indent: &str,
    tokens: impl Iterator<Item = &'a str>,
) {
    let mut line = first_prefix.to_owned();
    let mut line_has_token = false;
    for tok in tokens {
        if line_has_token && line.len() + 1 + tok.len() > TABLE_WIDTH {
            out.push_str(&line);
            out.push('\n');
            indent.clone_into(&mut line);
        }
        line.push(' ');
        line.push_str(tok);
        line_has_token = true;
    }
    out.push_str(&line);
    out.push('\n');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::{CoreInfo, NodeInfo};
    use std::collections::HashSet;

    fn synth(desc: &str) -> Topology {
        Topology::synthetic(desc).expect("valid synthetic description")
    }

    fn req(socs: Option<usize>, workers: Option<usize>) -> PlanRequest {
        PlanRequest {
            socs,
            workers_per_soc: workers,
        }
    }

    fn node_cpus(t: &Topology, os_index: u32) -> HashSet<u32> {
        t.nodes
            .iter()
            .filter(|n| n.os_index == os_index)
            .flat_map(|n| n.cores.iter().map(|c| c.pus[0]))
            .collect()
    }

    #[test]
    fn default_plan_four_nodes_four_cores() {
        let t = synth("node:4 core:4 pu:1");
        let p = plan(&t, &PlanRequest::default()).expect("plan");
        assert_eq!(p.socs.len(), 4);
        assert_eq!(p.worker_count(), 16);
        assert_eq!(p.nodes, 4);
        assert_eq!(p.cores, 16);
        let mut used = HashSet::new();
        for (i, s) in p.socs.iter().enumerate() {
            assert_eq!(s.soc, i);
            assert_eq!(s.node, t.nodes[i].os_index);
            assert_eq!(s.cpus.len(), 4);
            assert_eq!(s.workers.len(), 4);
            assert!(!s.oversubscribed);
            let in_node = node_cpus(&t, s.node);
            assert!(s.cpus.iter().all(|c| in_node.contains(c)));
            for (w, wp) in s.workers.iter().enumerate() {
                assert_eq!(wp.worker, w);
                assert_eq!(wp.cpu, s.cpus[w]);
                assert!(used.insert(wp.cpu), "cpu {} used twice", wp.cpu);
            }
        }
        assert!(!p.binding);
        assert!(
            p.notes
                .iter()
                .any(|n| n.contains("synthetic topology (node:4 core:4 pu:1)")
                    && n.contains("plan only"))
        );
        assert_eq!(p.notes.len(), 1, "{:?}", p.notes);
    }

    #[test]
    fn eight_socs_on_four_nodes_split_each_node() {
        let t = synth("node:4 core:4 pu:1");
        let p = plan(&t, &req(Some(8), None)).expect("plan");
        assert_eq!(p.socs.len(), 8);
        let mut used = HashSet::new();
        for (i, s) in p.socs.iter().enumerate() {
            assert_eq!(s.node, t.nodes[i / 2].os_index);
            assert_eq!(s.cpus.len(), 2);
            assert_eq!(s.workers.len(), 2);
            let in_node = node_cpus(&t, s.node);
            for c in &s.cpus {
                assert!(in_node.contains(c));
                assert!(used.insert(*c), "cpu {c} in two SOCs");
            }
            // contiguous chunk of the node's cores
            assert_eq!(s.cpus[1], s.cpus[0] + 1);
        }
        assert_eq!(used.len(), 16);
        assert!(p.notes.iter().any(|n| n.contains("split")), "{:?}", p.notes);
    }

    #[test]
    fn uneven_socs_first_nodes_get_extra() {
        let t = synth("node:2 core:5 pu:1");
        let p = plan(&t, &req(Some(3), None)).expect("plan");
        let nodes: Vec<u32> = p.socs.iter().map(|s| s.node).collect();
        assert_eq!(nodes, vec![0, 0, 1]);
        assert_eq!(p.socs[0].cpus, vec![0, 1, 2]);
        assert_eq!(p.socs[1].cpus, vec![3, 4]);
        assert_eq!(p.socs[2].cpus, vec![5, 6, 7, 8, 9]);
    }

    #[test]
    fn two_socs_on_four_nodes_note_unused_nodes() {
        let t = synth("node:4 core:4 pu:1");
        let p = plan(&t, &req(Some(2), None)).expect("plan");
        assert_eq!(p.socs.len(), 2);
        assert_eq!(p.socs[0].node, 0);
        assert_eq!(p.socs[1].node, 1);
        assert!(
            p.notes
                .iter()
                .any(|n| n.contains("unused") && n.contains("2, 3")),
            "{:?}",
            p.notes
        );
    }

    #[test]
    fn six_workers_on_four_cores_oversubscribe_round_robin() {
        let t = synth("node:1 core:4 pu:1");
        let p = plan(&t, &req(None, Some(6))).expect("plan");
        assert_eq!(p.socs.len(), 1);
        let s = &p.socs[0];
        assert!(s.oversubscribed);
        assert_eq!(s.workers.len(), 6);
        let cpus: Vec<u32> = s.workers.iter().map(|w| w.cpu).collect();
        assert_eq!(
            cpus,
            vec![
                s.cpus[0], s.cpus[1], s.cpus[2], s.cpus[3], s.cpus[0], s.cpus[1]
            ]
        );
        assert!(
            p.notes.iter().any(|n| n.contains("oversubscribed")),
            "{:?}",
            p.notes
        );
    }

    #[test]
    fn zero_socs_and_zero_workers_are_errors() {
        let t = synth("node:2 core:2 pu:1");
        let e = plan(&t, &req(Some(0), None)).expect_err("zero socs");
        assert_eq!(e, PlanError::ZeroSocs);
        assert!(e.to_string().contains("SOCs must be at least 1"));
        let e = plan(&t, &req(None, Some(0))).expect_err("zero workers");
        assert_eq!(e, PlanError::ZeroWorkers);
        assert!(e.to_string().contains("workers per SOC must be at least 1"));
    }

    #[test]
    fn too_many_is_an_error_not_an_allocation() {
        let t = synth("node:2 core:2 pu:1");
        let e = plan(&t, &req(Some(usize::MAX), None)).expect_err("too many socs");
        assert!(matches!(e, PlanError::TooManySocs { .. }));
        let e = plan(&t, &req(Some(4), Some(usize::MAX))).expect_err("too many workers");
        assert!(matches!(
            e,
            PlanError::TooManyWorkers {
                requested: usize::MAX,
                ..
            }
        ));
    }

    #[test]
    fn topology_without_cores_is_an_error() {
        let t = Topology {
            nodes: vec![NodeInfo {
                os_index: 0,
                cores: vec![CoreInfo {
                    logical_index: 0,
                    pus: vec![],
                }],
            }],
            memory_only_nodes: 0,
            synthetic: None,
            binding_supported: true,
        };
        assert_eq!(
            plan(&t, &PlanRequest::default()).expect_err("no cores"),
            PlanError::NoCores
        );
        let empty = Topology { nodes: vec![], ..t };
        assert_eq!(
            plan(&empty, &PlanRequest::default()).expect_err("no nodes"),
            PlanError::NoCores
        );
    }

    #[test]
    fn three_socs_on_two_cores_share_round_robin() {
        let t = synth("node:1 core:2 pu:1");
        let p = plan(&t, &req(Some(3), None)).expect("plan");
        assert_eq!(p.socs.len(), 3);
        let cpus: Vec<Vec<u32>> = p.socs.iter().map(|s| s.cpus.clone()).collect();
        assert_eq!(cpus, vec![vec![0], vec![1], vec![0]]);
        assert!(
            p.socs
                .iter()
                .all(|s| s.workers.len() == 1 && !s.oversubscribed)
        );
        assert!(p.notes.iter().any(|n| n.contains("share")), "{:?}", p.notes);
    }

    #[test]
    fn smt_workers_use_first_pu_of_each_core() {
        let t = synth("node:2 core:2 pu:2");
        let p = plan(&t, &PlanRequest::default()).expect("plan");
        assert_eq!(p.socs[0].cpus, vec![0, 2]);
        assert_eq!(p.socs[1].cpus, vec![4, 6]);
    }

    #[test]
    fn binding_follows_topology() {
        let t = Topology {
            nodes: vec![NodeInfo {
                os_index: 0,
                cores: vec![CoreInfo {
                    logical_index: 0,
                    pus: vec![0],
                }],
            }],
            memory_only_nodes: 0,
            synthetic: None,
            binding_supported: true,
        };
        let p = plan(&t, &PlanRequest::default()).expect("plan");
        assert!(p.binding);
        assert!(p.notes.is_empty(), "{:?}", p.notes);
        assert!(p.to_table().contains("binding: yes"));
    }

    #[test]
    fn table_mentions_each_soc_and_binding_no() {
        let t = synth("node:4 core:4 pu:1");
        let p = plan(&t, &PlanRequest::default()).expect("plan");
        let table = p.to_table();
        for s in 0..4 {
            assert!(table.contains(&format!("soc {s}:")), "{table}");
        }
        assert!(table.contains("binding: no"), "{table}");
        assert!(table.contains("0-3") && table.contains("12-15"), "{table}");
        for line in table.lines() {
            assert!(line.chars().count() <= 80, "line too long: {line:?}");
        }
    }

    #[test]
    fn table_wraps_many_workers() {
        let t = synth("node:1 core:4 pu:1");
        let p = plan(&t, &req(None, Some(64))).expect("plan");
        let table = p.to_table();
        assert!(table.contains("63->3"), "{table}");
        assert!(table.lines().all(|l| l.chars().count() <= 80), "{table}");
    }

    #[test]
    fn cpu_ranges_compacts() {
        assert_eq!(cpu_ranges(&[0, 1, 2, 3, 8]), "0-3,8");
        assert_eq!(cpu_ranges(&[4]), "4");
        assert_eq!(cpu_ranges(&[0, 2, 4]), "0,2,4");
        assert_eq!(cpu_ranges(&[]), "");
    }

    #[test]
    fn plan_serialises() {
        let p = plan(&synth("node:2 core:1 pu:1"), &PlanRequest::default()).expect("plan");
        let v = serde_json::to_value(&p).expect("json");
        assert_eq!(v["socs"][1]["workers"][0]["cpu"], 1);
        assert_eq!(v["binding"], false);
    }
}
