//! Real hosts on one machine: a network namespace per node, joined by veth pairs to a
//! Linux bridge that the harness creates, addresses in `10.77.X.0/24`, and the
//! partitions the nemesis makes with iptables inside the namespaces.
//!
//! Every name carries the run id (`nxc<run>br`, `nxc<run>-n<i>`, `nxc<run>v<i>`, iptables
//! comments `nacosd-chaos:<run>`), so two runs on one machine never touch each other's
//! objects. A run claims its id and its subnet with directories under [`CLAIMS`]
//! (`mkdir` is atomic), each holding the runner's pid; [`cleanup_leftovers`] removes the
//! objects of any run whose runner is gone (a crashed or SIGKILLed run), and nothing of
//! a live one.
//!
//! Addressing: node `i` (1-based) is `10.77.X.i`, the bridge (the runner's side) is
//! `10.77.X.254`. The runner talks to the nodes from the root namespace through the
//! bridge, so a partition between nodes never cuts the runner off from a node: an
//! isolated leader keeps receiving client requests, as it would behind a load balancer.
//!
//! Docker sets the FORWARD policy to DROP and, with `br_netfilter`, bridged frames
//! traverse FORWARD: one ACCEPT rule for the bridge (inserted first, removed at the end)
//! lets the nodes reach each other.
//!
//! Setup and teardown run `ip` and `iptables` synchronously: they happen before the
//! workload starts and after it stops. Partitions run while clients are busy and go
//! through [`tokio::process`].

use std::fs;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Where runs claim their ids and subnets.
pub const CLAIMS: &str = "/run/nacosd-chaos";

/// Prefix of every interface and namespace the harness creates.
const PREFIX: &str = "nxc";

/// Tag of the host iptables rules the harness adds.
const COMMENT_PREFIX: &str = "nacosd-chaos:";

/// The bridge, the namespaces and the host rules of one run.
pub struct Network {
    pub run_id: String,
    /// Third octet of the run's subnet.
    pub subnet: u8,
    nodes: usize,
    torn_down: bool,
}

impl Network {
    /// Claims a subnet and creates the bridge and one namespace per node. On error,
    /// whatever was created is removed again.
    pub fn create(run_id: &str, nodes: usize) -> Result<Network, String> {
        fs::create_dir_all(CLAIMS).map_err(|e| format!("creating {CLAIMS}: {e}"))?;
        claim(&run_dir(run_id))?;
        let subnet = match claim_subnet(run_id) {
            Ok(s) => s,
            Err(e) => {
                let _ = fs::remove_dir_all(run_dir(run_id));
                return Err(e);
            }
        };
        let mut net = Network {
            run_id: run_id.to_string(),
            subnet,
            nodes,
            torn_down: false,
        };
        if let Err(e) = net.build() {
            net.teardown();
            return Err(e);
        }
        Ok(net)
    }

    fn build(&self) -> Result<(), String> {
        let br = self.bridge();
        run(&["ip", "link", "add", &br, "type", "bridge"])?;
        run(&[
            "ip",
            "addr",
            "add",
            &format!("{}/24", self.bridge_ip()),
            "dev",
            &br,
        ])?;
        run(&["ip", "link", "set", &br, "up"])?;
        run(&[
            "iptables",
            "-w",
            "-I",
            "FORWARD",
            "1",
            "-i",
            &br,
            "-o",
            &br,
            "-m",
            "comment",
            "--comment",
            &self.comment(),
            "-j",
            "ACCEPT",
        ])?;
        for i in 1..=self.nodes {
            let ns = self.namespace(i);
            let veth = format!("{PREFIX}{}v{i}", self.run_id);
            run(&["ip", "netns", "add", &ns])?;
            run(&[
                "ip", "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns,
            ])?;
            run(&["ip", "link", "set", &veth, "master", &br, "up"])?;
            run(&[
                "ip",
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{}/24", self.node_ip(i)),
                "dev",
                "eth0",
            ])?;
            run(&["ip", "-n", &ns, "link", "set", "eth0", "up"])?;
            run(&["ip", "-n", &ns, "link", "set", "lo", "up"])?;
        }
        Ok(())
    }

    pub fn bridge(&self) -> String {
        format!("{PREFIX}{}br", self.run_id)
    }

    fn comment(&self) -> String {
        format!("{COMMENT_PREFIX}{}", self.run_id)
    }

    /// The namespace of node `i` (1-based).
    pub fn namespace(&self, i: usize) -> String {
        format!("{PREFIX}{}-n{i}", self.run_id)
    }

    pub fn node_ip(&self, i: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, 77, self.subnet, i as u8)
    }

    pub fn bridge_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 77, self.subnet, 254)
    }

    /// Mounts a tmpfs of `size_mb` on `dir` (created if needed), remembered in the
    /// run's claim so that a crashed run's mount is found and removed later.
    pub fn mount_tmpfs(&self, dir: &Path, size_mb: u64) -> Result<(), String> {
        fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let list = run_dir(&self.run_id).join("mounts");
        let mut known = fs::read_to_string(&list).unwrap_or_default();
        known.push_str(&format!("{}\n", dir.display()));
        fs::write(&list, known).map_err(|e| format!("{}: {e}", list.display()))?;
        let dir = dir.to_string_lossy();
        run(&[
            "mount",
            "-t",
            "tmpfs",
            "-o",
            &format!("size={size_mb}m"),
            "nacosd-chaos",
            &dir,
        ])
    }

    /// Node `a` stops hearing from and talking to node `b` (both directions, as seen
    /// from `a`'s namespace). Call it for `(b, a)` too for a symmetric cut.
    pub async fn block(&self, a: usize, b: usize) -> Result<(), String> {
        let peer = self.node_ip(b).to_string();
        self.in_ns(
            a,
            &["iptables", "-w", "-A", "INPUT", "-s", &peer, "-j", "DROP"],
        )
        .await?;
        self.in_ns(
            a,
            &["iptables", "-w", "-A", "OUTPUT", "-d", &peer, "-j", "DROP"],
        )
        .await
    }

    /// Packets from `a` to `b` are dropped with `probability`; `b` to `a` is untouched.
    pub async fn lossy(&self, a: usize, b: usize, probability: f64) -> Result<(), String> {
        let peer = self.node_ip(b).to_string();
        let p = format!("{probability:.2}");
        self.in_ns(
            a,
            &[
                "iptables",
                "-w",
                "-A",
                "OUTPUT",
                "-d",
                &peer,
                "-m",
                "statistic",
                "--mode",
                "random",
                "--probability",
                &p,
                "-j",
                "DROP",
            ],
        )
        .await
    }

    /// Removes every partition rule in every namespace.
    pub async fn heal(&self) -> Result<(), String> {
        for i in 1..=self.nodes {
            self.in_ns(i, &["iptables", "-w", "-F", "INPUT"]).await?;
            self.in_ns(i, &["iptables", "-w", "-F", "OUTPUT"]).await?;
        }
        Ok(())
    }

    async fn in_ns(&self, i: usize, cmd: &[&str]) -> Result<(), String> {
        let ns = self.namespace(i);
        let mut args = vec!["netns", "exec", ns.as_str()];
        args.extend_from_slice(cmd);
        let out = tokio::process::Command::new("ip")
            .args(&args)
            .output()
            .await
            .map_err(|e| format!("ip {}: {e}", args.join(" ")))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "ip {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }

    /// Removes the namespaces (killing anything left in them), the bridge, the host
    /// rule and the claims. Safe to call twice; also run on drop.
    pub fn teardown(&mut self) {
        if self.torn_down {
            return;
        }
        self.torn_down = true;
        remove_run(&self.run_id);
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        self.teardown();
    }
}

fn run_dir(run_id: &str) -> PathBuf {
    Path::new(CLAIMS).join(format!("run-{run_id}"))
}

/// Creates `dir` (failing if it exists) and writes this process's pid into it.
fn claim(dir: &Path) -> Result<(), String> {
    fs::create_dir(dir).map_err(|e| format!("claiming {}: {e}", dir.display()))?;
    fs::write(dir.join("pid"), std::process::id().to_string())
        .map_err(|e| format!("writing {}/pid: {e}", dir.display()))
}

/// The first free third octet: not claimed by another run and not on any interface.
fn claim_subnet(run_id: &str) -> Result<u8, String> {
    let in_use = capture(&["ip", "-4", "-o", "addr", "show"]).unwrap_or_default();
    for x in 0..=255u8 {
        if in_use.contains(&format!("10.77.{x}.")) {
            continue;
        }
        let dir = Path::new(CLAIMS).join(format!("subnet-{x}"));
        if fs::create_dir(&dir).is_ok() {
            fs::write(dir.join("run"), run_id).map_err(|e| format!("{}: {e}", dir.display()))?;
            fs::write(dir.join("pid"), std::process::id().to_string())
                .map_err(|e| format!("{}: {e}", dir.display()))?;
            return Ok(x);
        }
    }
    Err("no free subnet in 10.77.0.0/16".to_string())
}

/// Whether the runner that wrote `dir/pid` is still alive.
fn claim_alive(dir: &Path) -> bool {
    let Ok(pid) = fs::read_to_string(dir.join("pid")) else {
        return false;
    };
    let pid = pid.trim();
    match fs::read(format!("/proc/{pid}/cmdline")) {
        Ok(cmdline) => String::from_utf8_lossy(&cmdline).contains("nacosd-chaos"),
        Err(_) => false,
    }
}

/// Removes every object of runs whose runner is gone; returns the run ids cleaned.
pub fn cleanup_leftovers() -> Vec<String> {
    let mut live = Vec::new();
    let mut claimed = Vec::new();
    if let Ok(entries) = fs::read_dir(CLAIMS) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            if let Some(run_id) = name.strip_prefix("run-") {
                claimed.push(run_id.to_string());
                if claim_alive(&entry.path()) {
                    live.push(run_id.to_string());
                }
            }
        }
    }
    // Objects whose claim is gone too (a run killed between the two steps).
    let mut found: Vec<String> = claimed;
    let netns = capture(&["ip", "netns", "list"]).unwrap_or_default();
    for line in netns.lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        if let Some(run) = name.strip_prefix(PREFIX).and_then(|r| r.split('-').next()) {
            found.push(run.to_string());
        }
    }
    let links = capture(&["ip", "-o", "link", "show", "type", "bridge"]).unwrap_or_default();
    for line in links.lines() {
        let name = line.split(": ").nth(1).unwrap_or("");
        if let Some(run) = name.strip_prefix(PREFIX).and_then(|r| r.strip_suffix("br")) {
            found.push(run.to_string());
        }
    }
    for (_, comment) in host_rules() {
        found.push(comment);
    }
    if let Ok(entries) = fs::read_dir(CLAIMS) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            if name.starts_with("subnet-") {
                if let Ok(run) = fs::read_to_string(entry.path().join("run")) {
                    found.push(run.trim().to_string());
                }
            }
        }
    }
    found.sort();
    found.dedup();
    found.retain(|run| !run.is_empty() && !live.contains(run));
    for run in &found {
        remove_run(run);
    }
    found
}

/// The harness's rules in the host's FORWARD chain: (rule as `iptables -S` prints it,
/// run id).
fn host_rules() -> Vec<(String, String)> {
    let rules = capture(&["iptables", "-w", "-S", "FORWARD"]).unwrap_or_default();
    rules
        .lines()
        .filter_map(|line| {
            let at = line.find(COMMENT_PREFIX)?;
            let run: String = line[at + COMMENT_PREFIX.len()..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric())
                .collect();
            Some((line.to_string(), run))
        })
        .collect()
}

/// Removes everything named after `run_id`: processes in its namespaces, the
/// namespaces (which takes the veth pairs with them), the bridge, the host rules and
/// the claims. Errors are ignored: each object may already be gone.
fn remove_run(run_id: &str) {
    let netns = capture(&["ip", "netns", "list"]).unwrap_or_default();
    let prefix = format!("{PREFIX}{run_id}-");
    for line in netns.lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        if !name.starts_with(&prefix) {
            continue;
        }
        let pids = capture(&["ip", "netns", "pids", name]).unwrap_or_default();
        for pid in pids.split_whitespace() {
            let _ = run(&["kill", "-9", pid]);
        }
        let _ = run(&["ip", "netns", "del", name]);
    }
    let _ = run(&["ip", "link", "del", &format!("{PREFIX}{run_id}br")]);
    let mounts = fs::read_to_string(run_dir(run_id).join("mounts")).unwrap_or_default();
    for dir in mounts.lines().filter(|l| !l.is_empty()) {
        let _ = run(&["umount", "-l", dir]);
    }
    for (rule, owner) in host_rules() {
        if owner == run_id {
            if let Some(spec) = rule.strip_prefix("-A ") {
                let parts = split_rule(spec);
                let mut args = vec!["iptables", "-w", "-D"];
                args.extend(parts.iter().map(String::as_str));
                let _ = run(&args);
            }
        }
    }
    if let Ok(entries) = fs::read_dir(CLAIMS) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            let ours = name == format!("run-{run_id}")
                || (name.starts_with("subnet-")
                    && fs::read_to_string(entry.path().join("run"))
                        .is_ok_and(|r| r.trim() == run_id));
            if ours {
                let _ = fs::remove_dir_all(entry.path());
            }
        }
    }
}

/// Splits an `iptables -S` rule into arguments, keeping quoted comments whole.
fn split_rule(spec: &str) -> Vec<String> {
    let mut args = Vec::new();
    let mut current = String::new();
    let mut quoted = false;
    for c in spec.chars() {
        match c {
            '"' => quoted = !quoted,
            ' ' if !quoted => {
                if !current.is_empty() {
                    args.push(std::mem::take(&mut current));
                }
            }
            c => current.push(c),
        }
    }
    if !current.is_empty() {
        args.push(current);
    }
    args
}

fn run(args: &[&str]) -> Result<(), String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| format!("{}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn capture(args: &[&str]) -> Result<String, String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| format!("{}: {e}", args.join(" ")))?;
    Ok(String::from_utf8_lossy(&out.stdout).to_string())
}

/// Whether the tools the harness needs are installed.
pub fn missing_tools() -> Vec<&'static str> {
    ["ip", "iptables", "kill"]
        .into_iter()
        .filter(|tool| {
            Command::new(tool)
                .arg("-V")
                .output()
                .map(|_| false)
                .unwrap_or(true)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_split_with_quoted_comments() {
        let spec =
            r#"FORWARD -i nxcabcbr -o nxcabcbr -m comment --comment "nacosd-chaos:abc" -j ACCEPT"#;
        assert_eq!(
            split_rule(spec),
            [
                "FORWARD",
                "-i",
                "nxcabcbr",
                "-o",
                "nxcabcbr",
                "-m",
                "comment",
                "--comment",
                "nacosd-chaos:abc",
                "-j",
                "ACCEPT"
            ]
        );
    }
}
