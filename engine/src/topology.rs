//! Machine topology: NUMA nodes, their cores and the cores' hardware threads.
//!
//! The topology is read with [hwlocality] (Rust bindings to hwloc), either from
//! this machine ([`Topology::detect`]) or from an hwloc synthetic description
//! ([`Topology::synthetic`]), and flattened into a small, serialisable
//! [`Topology`] value that the rest of the engine (notably
//! [`plan`](crate::plan)) works with without touching hwloc again.
//!
//! hwloc itself honours the `HWLOC_SYNTHETIC` and `HWLOC_XMLFILE` environment
//! variables when reading "this machine"; [`Topology::detect`] reports such a
//! topology as not being this system (its `synthetic` field is set), and
//! never claims that binding is supported for it.

use hwlocality::object::TopologyObject;
use hwlocality::object::types::ObjectType;
use hwlocality::topology::support::{CpuBindingSupport, FeatureSupport};

/// Largest number of PUs (hardware threads) a synthetic description may
/// describe, as estimated from the product of its level arities.
///
/// hwloc's synthetic backend gets slow superlinearly (about 4 s for 8192 PUs,
/// minutes for 64k), so larger descriptions are refused up front.
const MAX_SYNTHETIC_PUS: u64 = 8192;

/// The part of a machine's topology that matters for placing workers.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Topology {
    /// NUMA nodes sorted by OS index; every node has at least one core (nodes
    /// without cores, e.g. memory-only nodes, are left out and counted in
    /// `memory_only_nodes`).
    pub nodes: Vec<NodeInfo>,
    /// Number of NUMA nodes that have no core of their own (memory-only nodes,
    /// or additional memory nodes such as HBM attached to the same cores as
    /// another node) and therefore are not listed in `nodes`.
    pub memory_only_nodes: usize,
    /// `Some(description)` when the topology is not this machine (a synthetic
    /// one given explicitly or through `HWLOC_SYNTHETIC`, or `HWLOC_XMLFILE`);
    /// `None` when it was read from this system.
    pub synthetic: Option<String>,
    /// `true` only when the topology describes this system AND hwloc reports
    /// that binding the current thread's CPU is supported.
    pub binding_supported: bool,
}

/// One NUMA node and the cores it contains.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct NodeInfo {
    /// hwloc OS index of the NUMA node (the kernel's node number).
    pub os_index: u32,
    /// The node's cores, in hwloc logical order.
    pub cores: Vec<CoreInfo>,
}

/// One core and its hardware threads.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CoreInfo {
    /// hwloc logical index of the core (of the PU when hwloc reports no cores).
    pub logical_index: u32,
    /// OS indexes of the PUs (hardware threads) of this core, ascending.
    pub pus: Vec<u32>,
}

/// Why a topology could not be obtained.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TopologyError {
    /// hwloc failed to read the topology of this machine.
    #[error("hwloc could not read the topology of this machine")]
    Detect(#[source] hwlocality::errors::RawHwlocError),
    /// hwloc rejected a synthetic topology description.
    #[error(
        "invalid synthetic topology description {description:?} \
         (expected something like \"node:4 core:4 pu:1\")"
    )]
    InvalidSynthetic {
        /// The description as given.
        description: String,
        /// hwloc's reason.
        #[source]
        source: hwlocality::topology::builder::StringInputError,
    },
    /// hwloc accepted a synthetic description but failed to build it.
    #[error("hwloc could not build the synthetic topology {description:?}")]
    SyntheticBuild {
        /// The description as given.
        description: String,
        /// hwloc's error.
        #[source]
        source: hwlocality::errors::RawHwlocError,
    },
    /// A synthetic description describes too many PUs to be built quickly.
    #[error(
        "synthetic topology description {description:?} describes about {pus} PUs; \
         at most {max} are supported"
    )]
    SyntheticTooLarge {
        /// The description as given.
        description: String,
        /// Estimated number of PUs (saturating product of the level arities).
        pus: u64,
        /// The limit (8,192).
        max: u64,
    },
    /// hwloc reported a topology without any PU.
    #[error("the topology ({source_desc}) contains no cores or PUs")]
    NoCores {
        /// Where the topology came from.
        source_desc: String,
    },
    /// An hwloc index does not fit in 32 bits.
    #[error("hwloc reported a {what} index {index} that does not fit in 32 bits")]
    IndexOverflow {
        /// What kind of index ("PU OS", "core logical", "NUMA node OS").
        what: &'static str,
        /// The offending index.
        index: usize,
    },
}

impl Topology {
    /// Reads the topology of this machine.
    ///
    /// hwloc itself honours `HWLOC_SYNTHETIC` and `HWLOC_XMLFILE` (an invalid
    /// value is silently ignored by hwloc, which then reads the real machine).
    /// When the result is not this system (hwloc's "is this system" flag is
    /// false, or the synthetic backend was used) `synthetic` is `Some`: the
    /// value of `HWLOC_SYNTHETIC` for a synthetic topology, otherwise
    /// `"not this system (HWLOC_XMLFILE=...)"` or similar; binding is then
    /// never reported as supported.
    ///
    /// # Errors
    ///
    /// [`TopologyError::Detect`] when hwloc fails to load the topology,
    /// [`TopologyError::NoCores`] when it contains no PU at all.
    pub fn detect() -> Result<Topology, TopologyError> {
        let topo = hwlocality::Topology::new().map_err(TopologyError::Detect)?;
        let root = topo.root_object();
        let backend_synthetic = cstr_info(root, "Backend").as_deref() == Some("Synthetic");
        let this_system = topo.is_this_system() && !backend_synthetic;
        let synthetic = if this_system {
            None
        } else if backend_synthetic {
            Some(
                non_empty_env("HWLOC_SYNTHETIC")
                    .or_else(|| cstr_info(root, "SyntheticDescription"))
                    .unwrap_or_else(|| "synthetic topology".to_owned()),
            )
        } else {
            Some(not_this_system_description())
        };
        let binding_supported = this_system
            && topo.supports(
                FeatureSupport::cpu_binding,
                CpuBindingSupport::set_current_thread,
            );
        let source_desc = synthetic
            .clone()
            .unwrap_or_else(|| "this machine".to_owned());
        let mut out = from_hwloc(&topo, &source_desc)?;
        out.synthetic = synthetic;
        out.binding_supported = binding_supported;
        Ok(out)
    }

    /// A synthetic topology from an hwloc synthetic description such as
    /// `"node:4 core:4 pu:1"` (see `lstopo --input "node:4 core:4 pu:1"`).
    /// Never binds. `HWLOC_SYNTHETIC`/`HWLOC_XMLFILE` do not affect it.
    ///
    /// # Errors
    ///
    /// [`TopologyError::InvalidSynthetic`] when hwloc rejects the description
    /// (including an empty one), [`TopologyError::SyntheticTooLarge`] when it
    /// describes more than 8,192 PUs,
    /// [`TopologyError::SyntheticBuild`] when hwloc fails to build it.
    pub fn synthetic(description: &str) -> Result<Topology, TopologyError> {
        let pus = estimated_pus(description);
        if pus > MAX_SYNTHETIC_PUS {
            return Err(TopologyError::SyntheticTooLarge {
                description: description.to_owned(),
                pus,
                max: MAX_SYNTHETIC_PUS,
            });
        }
        let topo = hwlocality::Topology::builder()
            .from_synthetic(description)
            .map_err(|source| TopologyError::InvalidSynthetic {
                description: description.to_owned(),
                source,
            })?
            .build()
            .map_err(|source| TopologyError::SyntheticBuild {
                description: description.to_owned(),
                source,
            })?;
        let mut out = from_hwloc(&topo, description)?;
        out.synthetic = Some(description.to_owned());
        out.binding_supported = false;
        Ok(out)
    }

    /// Total number of cores over all nodes.
    #[must_use]
    pub fn core_count(&self) -> usize {
        self.nodes.iter().map(|n| n.cores.len()).sum()
    }
}

/// Value of an environment variable, if set to something non-empty.
fn non_empty_env(name: &str) -> Option<String> {
    std::env::var_os(name)
        .map(|v| v.to_string_lossy().into_owned())
        .filter(|v| !v.is_empty())
}

/// Describes why a topology that hwloc says is not this system is foreign.
fn not_this_system_description() -> String {
    let vars: Vec<String> = ["HWLOC_XMLFILE", "HWLOC_FSROOT", "HWLOC_SYNTHETIC"]
        .iter()
        .filter_map(|name| non_empty_env(name).map(|v| format!("{name}={v}")))
        .collect();
    if vars.is_empty() {
        "not this system (hwloc reports that the topology was not read from this system)".to_owned()
    } else {
        format!("not this system ({})", vars.join(", "))
    }
}

/// A textual info attribute of an hwloc object, as an owned string.
fn cstr_info(obj: &TopologyObject, key: &str) -> Option<String> {
    obj.info(key).map(|v| v.to_string_lossy().into_owned())
}

/// Rough number of PUs a synthetic description describes: the saturating
/// product of the arities of its levels (`type:N` or a bare `N`). Memory
/// attachments (`[numa]`) and attributes (`(...)`) do not count. Tokens that do
/// not parse are ignored; hwloc validates the description anyway.
fn estimated_pus(description: &str) -> u64 {
    description
        .split_whitespace()
        .filter(|tok| !tok.starts_with('[') && !tok.starts_with('('))
        .filter_map(|tok| {
            let level = tok.split('(').next().unwrap_or(tok);
            let arity = level.rsplit(':').next().unwrap_or(level);
            let digits: String = arity.chars().take_while(char::is_ascii_digit).collect();
            digits.parse::<u64>().ok()
        })
        .fold(1u64, u64::saturating_mul)
}

/// Converts an index reported by hwloc to `u32`.
fn to_u32(what: &'static str, index: usize) -> Result<u32, TopologyError> {
    u32::try_from(index).map_err(|_| TopologyError::IndexOverflow { what, index })
}

/// A NUMA node as seen by hwloc, with the cores assigned to it so far.
struct RawNode<'t> {
    os_index: u32,
    obj: &'t TopologyObject,
    cores: Vec<CoreInfo>,
}

/// Flattens an hwloc topology into nodes → cores → PUs. `synthetic` and
/// `binding_supported` are left for the caller to fill in.
fn from_hwloc(topo: &hwlocality::Topology, source_desc: &str) -> Result<Topology, TopologyError> {
    // Cores, or PUs standing in for cores when hwloc reports no Core objects.
    let core_objs: Vec<&TopologyObject> = {
        let cores: Vec<_> = topo.objects_with_type(ObjectType::Core).collect();
        if cores.is_empty() {
            topo.objects_with_type(ObjectType::PU).collect()
        } else {
            cores
        }
    };
    let mut cores: Vec<(CoreInfo, &TopologyObject)> = Vec::with_capacity(core_objs.len());
    for obj in core_objs {
        let Some(cpuset) = obj.cpuset() else { continue };
        if cpuset.weight().is_none() {
            // An infinite cpuset cannot describe a core; skip it defensively.
            continue;
        }
        let mut pus = Vec::new();
        for pu in cpuset.iter_set() {
            pus.push(to_u32("PU OS", usize::from(pu))?);
        }
        if pus.is_empty() {
            // Every PU of this core is disallowed: nothing to run on.
            continue;
        }
        pus.sort_unstable();
        let logical_index = to_u32("core logical", obj.logical_index())?;
        cores.push((CoreInfo { logical_index, pus }, obj));
    }
    if cores.is_empty() {
        return Err(TopologyError::NoCores {
            source_desc: source_desc.to_owned(),
        });
    }
    cores.sort_by_key(|(c, _)| c.logical_index);

    let mut raw_nodes: Vec<RawNode<'_>> = Vec::new();
    for obj in topo.objects_with_type(ObjectType::NUMANode) {
        let os_index = to_u32(
            "NUMA node OS",
            obj.os_index().unwrap_or_else(|| obj.logical_index()),
        )?;
        raw_nodes.push(RawNode {
            os_index,
            obj,
            cores: Vec::new(),
        });
    }
    raw_nodes.sort_by_key(|n| n.os_index);
    let numa_total = raw_nodes.len();

    let mut orphans: Vec<CoreInfo> = Vec::new();
    for (core, obj) in cores {
        match owning_node(&raw_nodes, obj) {
            Some(i) => raw_nodes[i].cores.push(core),
            None => orphans.push(core),
        }
    }

    let mut nodes: Vec<NodeInfo> = raw_nodes
        .into_iter()
        .filter(|n| !n.cores.is_empty())
        .map(|n| NodeInfo {
            os_index: n.os_index,
            cores: n.cores,
        })
        .collect();
    let memory_only_nodes = numa_total - nodes.len();

    if nodes.is_empty() {
        // No NUMA node with cores: the whole machine is one node.
        nodes.push(NodeInfo {
            os_index: 0,
            cores: orphans,
        });
    } else if !orphans.is_empty() {
        // Cores outside every node's cpuset (should not happen with hwloc 2):
        // keep them usable by giving them to the first node.
        let first = &mut nodes[0].cores;
        first.extend(orphans);
        first.sort_by_key(|c| c.logical_index);
    }

    Ok(Topology {
        nodes,
        memory_only_nodes,
        synthetic: None,
        binding_supported: false,
    })
}

/// Index in `nodes` of the node a core belongs to: the first (lowest OS index)
/// node whose cpuset includes the core's cpuset, else the node sharing most
/// PUs with it, else none.
fn owning_node(nodes: &[RawNode<'_>], core: &TopologyObject) -> Option<usize> {
    let core_set = core.cpuset()?;
    let mut best: Option<(usize, usize)> = None;
    for (i, node) in nodes.iter().enumerate() {
        let Some(node_set) = node.obj.cpuset() else {
            continue;
        };
        if node_set.is_empty() {
            continue;
        }
        if node_set.includes(&*core_set) {
            return Some(i);
        }
        if node_set.intersects(&*core_set) {
            let shared = (&*node_set & &*core_set).weight().unwrap_or(0);
            if best.is_none_or(|(_, w)| shared > w) {
                best = Some((i, shared));
            }
        }
    }
    best.map(|(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn synthetic_four_nodes_of_four_cores() {
        let t = Topology::synthetic("node:4 core:4 pu:1").expect("valid description");
        assert_eq!(t.nodes.len(), 4);
        assert_eq!(t.core_count(), 16);
        assert_eq!(t.memory_only_nodes, 0);
        assert_eq!(t.synthetic.as_deref(), Some("node:4 core:4 pu:1"));
        assert!(!t.binding_supported);
        for (i, node) in t.nodes.iter().enumerate() {
            assert_eq!(node.os_index as usize, i);
            let pus: Vec<u32> = node.cores.iter().flat_map(|c| c.pus.clone()).collect();
            let expected: Vec<u32> = (0..4).map(|k| (i as u32) * 4 + k).collect();
            assert_eq!(pus, expected);
        }
    }

    #[test]
    fn synthetic_smt_pus_are_grouped_and_ascending() {
        let t = Topology::synthetic("node:2 core:2 pu:2").expect("valid description");
        assert_eq!(t.nodes.len(), 2);
        assert_eq!(t.core_count(), 4);
        assert_eq!(t.nodes[0].cores[0].pus, vec![0, 1]);
        assert_eq!(t.nodes[0].cores[1].pus, vec![2, 3]);
        assert_eq!(t.nodes[1].cores[1].pus, vec![6, 7]);
    }

    #[test]
    fn synthetic_without_numa_level_is_one_node() {
        let t = Topology::synthetic("core:2 pu:1").expect("valid description");
        assert_eq!(t.nodes.len(), 1);
        assert_eq!(t.nodes[0].os_index, 0);
        assert_eq!(t.core_count(), 2);
    }

    #[test]
    fn synthetic_without_cores_uses_pus_as_cores() {
        let t = Topology::synthetic("node:2 pu:2").expect("valid description");
        assert_eq!(t.nodes.len(), 2);
        assert_eq!(t.core_count(), 4);
        assert!(
            t.nodes
                .iter()
                .all(|n| n.cores.iter().all(|c| c.pus.len() == 1))
        );
    }

    #[test]
    fn second_memory_node_on_same_cores_counts_as_memory_only() {
        let t = Topology::synthetic("pack:2 [numa] [numa] core:2 pu:1").expect("valid");
        assert_eq!(t.nodes.len(), 2);
        assert_eq!(t.memory_only_nodes, 2);
        assert_eq!(t.nodes[0].os_index, 0);
        assert_eq!(t.nodes[1].os_index, 2);
        assert_eq!(t.core_count(), 4);
    }

    #[test]
    fn invalid_synthetic_descriptions_are_errors() {
        for bad in [
            "bogus:3",
            "",
            "node:0 core:1",
            "node:2 core:2",
            "node:2\0core:1",
        ] {
            let err = Topology::synthetic(bad).expect_err(bad);
            assert!(
                matches!(err, TopologyError::InvalidSynthetic { .. }),
                "{bad:?}: {err:?}"
            );
            assert!(err.to_string().contains("invalid synthetic topology"));
        }
    }

    #[test]
    fn huge_synthetic_description_is_refused() {
        let err = Topology::synthetic("node:3 core:100000 pu:1").expect_err("too large");
        assert!(matches!(
            err,
            TopologyError::SyntheticTooLarge { pus: 300_000, .. }
        ));
        assert!(err.to_string().contains("300000 PUs"));
    }

    #[test]
    fn pu_estimate() {
        assert_eq!(estimated_pus("node:4 core:4 pu:1"), 16);
        assert_eq!(estimated_pus("pack:2 [numa] [numa] core:2 pu:2"), 8);
        assert_eq!(estimated_pus("pack:2(memory=1GB) core:3 pu:1"), 6);
        assert_eq!(estimated_pus("2 4 2"), 16);
        assert_eq!(estimated_pus("garbage"), 1);
    }

    #[test]
    fn detect_reads_this_machine() {
        let t = Topology::detect().expect("hwloc reads this machine");
        assert!(!t.nodes.is_empty());
        assert!(t.core_count() >= 1);
        assert!(t.nodes.iter().all(|n| !n.cores.is_empty()));
        assert_eq!(t.synthetic, None);
        assert!(t.binding_supported);
    }

    #[test]
    fn serialises_to_json() {
        let t = Topology::synthetic("node:2 core:1 pu:1").expect("valid");
        let json = serde_json::to_value(&t).expect("serialisable");
        assert_eq!(json["nodes"][1]["os_index"], 1);
        assert_eq!(json["synthetic"], "node:2 core:1 pu:1");
        assert_eq!(json["binding_supported"], false);
    }
}
