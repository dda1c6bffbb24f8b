//! The `numaproc-client` contender: the same round trip as `numaproc`, made
//! by a client process attached to the job's engine through server mode
//! (`numaproc::Client`). The job's process serves; a peer process (this
//! binary, `numaproc-bench client-peer`), pinned where the job's session
//! would run, times its calls block by block, as the job asks over a pipe,
//! and sends the samples back.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use numaproc::{Client, ClientOptions, ProcId, SessionCore, Target};
use numaproc_benches::sys::pin_to;

/// The peer process, as the job drives it.
pub struct ClientPeer {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

/// One round trip through a claimed slot (the `numaproc` contender's).
pub fn round_trip(
    core: &SessionCore,
    target: Target,
    proc: ProcId,
    src: &[u8],
    dst: &mut [u8],
) -> Result<()> {
    let mut claim = core.claim(target)?;
    claim.input_mut()[..src.len()].copy_from_slice(src);
    let mut session = claim.submit(proc, src.len())?;
    let out = session.wait()?;
    let n = out.len().min(dst.len());
    dst[..n].copy_from_slice(&out[..n]);
    Ok(())
}

impl ClientPeer {
    /// Starts the peer, attached to server `name` in `dir`, pinned to
    /// `cpu`.
    pub fn start(name: &str, dir: &Path, cpu: Option<u32>) -> Result<Self> {
        let exe = std::env::current_exe().context("locating this binary")?;
        let mut cmd = Command::new(exe);
        cmd.args(["client-peer", "--name", name, "--dir"])
            .arg(dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if let Some(c) = cpu {
            cmd.args(["--cpu", &c.to_string()]);
        }
        let mut child = cmd.spawn().context("starting the client peer")?;
        let stdin = child.stdin.take().context("the peer's stdin")?;
        let mut stdout = BufReader::new(child.stdout.take().context("the peer's stdout")?);
        let mut line = String::new();
        stdout.read_line(&mut line)?;
        if line.trim() != "ready" {
            let _ = child.kill();
            let _ = child.wait();
            bail!("the client peer did not attach: {line:?}");
        }
        Ok(Self {
            child,
            stdin,
            stdout,
        })
    }

    /// Has the peer make `warm` untimed then up to `calls` timed round
    /// trips of `size` bytes to `target` (stopping after `budget`); returns
    /// the timed ones' durations in ns.
    pub fn block(
        &mut self,
        warm: usize,
        calls: usize,
        budget: Duration,
        size: usize,
        target: Target,
        proc: &str,
    ) -> Result<Vec<u64>> {
        let (soc, worker) = match target {
            Target::Worker { soc, worker } => (soc, worker),
            _ => bail!("the client peer calls one worker"),
        };
        writeln!(
            self.stdin,
            "{warm} {calls} {} {size} {soc} {worker} {proc}",
            budget.as_millis()
        )?;
        self.stdin.flush()?;
        let mut line = String::new();
        self.stdout.read_line(&mut line)?;
        if let Some(e) = line.strip_prefix("error ") {
            bail!("client peer: {}", e.trim());
        }
        line.split_ascii_whitespace()
            .map(|t| t.parse::<u64>().context("the peer's samples"))
            .collect()
    }

    /// Ends the peer.
    pub fn stop(mut self) -> Result<()> {
        drop(self.stdin);
        let status = self.child.wait()?;
        if !status.success() {
            bail!("the client peer ended with {status}");
        }
        Ok(())
    }
}

/// The peer's side (`numaproc-bench client-peer`): attaches, pins, says
/// "ready", then runs the blocks asked on stdin, one line of samples each.
pub fn serve(name: &str, dir: &Path, cpu: Option<u32>) -> Result<()> {
    let client = Client::connect_with(name, &ClientOptions::new().dir(dir))
        .with_context(|| format!("attaching to {name}"))?;
    if let Some(c) = cpu {
        pin_to(c)?;
    }
    let mut out = std::io::stdout().lock();
    writeln!(out, "ready")?;
    out.flush()?;
    let mut src = Vec::new();
    let mut dst = Vec::new();
    for line in std::io::stdin().lock().lines() {
        let line = line?;
        let f: Vec<&str> = line.split_ascii_whitespace().collect();
        let [warm, calls, budget_ms, size, soc, worker, proc] = f[..] else {
            bail!("bad request {line:?}");
        };
        let (warm, calls, budget_ms, size, soc, worker): (usize, usize, u64, usize, usize, usize) = (
            warm.parse()?,
            calls.parse()?,
            budget_ms.parse()?,
            size.parse()?,
            soc.parse()?,
            worker.parse()?,
        );
        src.resize(size, 0);
        for (i, b) in src.iter_mut().enumerate() {
            *b = (i * 31 + 7) as u8;
        }
        dst.resize(size.max(1), 0);
        let target = Target::Worker { soc, worker };
        let mut run = || -> Result<Vec<u64>> {
            let proc = client.proc_id(proc)?;
            for _ in 0..warm {
                round_trip(&client, target, proc, &src, &mut dst)?;
            }
            let mut samples = Vec::with_capacity(calls);
            let budget = Duration::from_millis(budget_ms);
            let start = Instant::now();
            for _ in 0..calls {
                let t = Instant::now();
                round_trip(&client, target, proc, &src, &mut dst)?;
                let end = Instant::now();
                samples.push((end - t).as_nanos() as u64);
                if end - start >= budget {
                    break;
                }
            }
            Ok(samples)
        };
        match run() {
            Ok(samples) => {
                let text: Vec<String> = samples.iter().map(u64::to_string).collect();
                writeln!(out, "{}", text.join(" "))?;
            }
            Err(e) => writeln!(out, "error {e:#}")?,
        }
        out.flush()?;
    }
    Ok(())
}
