//! The full-disk fault: one node's data directory is a small tmpfs of its own, and the
//! fault fills it with a file of zeros until writes fail with ENOSPC; healing deletes
//! the file.
//!
//! nacosd stops a group that cannot apply a committed entry (an I/O error is not an
//! answer), and may exit. That is by design, so healing then restarts the node — same
//! data directory, same flags — and the report says so. A node that does not catch up
//! after that is caught by the convergence check like any other.

use std::path::PathBuf;
use std::time::Duration;

use tokio::process::Command;

use super::cluster::Cluster;
use super::node::ProcessState;
use crate::pb;

/// The node with the small disk, and where its disk is mounted.
#[derive(Debug, Clone)]
pub struct DiskFault {
    pub node: usize,
    pub mount: PathBuf,
}

impl DiskFault {
    fn filler(&self) -> PathBuf {
        self.mount.join("chaos-filler")
    }

    /// Fills the tmpfs. `dd` stops at ENOSPC, which is the point.
    pub async fn fill(&self) -> Result<(), String> {
        let of = format!("of={}", self.filler().display());
        Command::new("dd")
            .args(["if=/dev/zero", &of, "bs=1M", "status=none"])
            .stderr(std::process::Stdio::null())
            .status()
            .await
            .map_err(|e| format!("dd: {e}"))?;
        Ok(())
    }

    pub async fn free(&self) -> Result<(), String> {
        match tokio::fs::remove_file(self.filler()).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(format!("{}: {e}", self.filler().display())),
        }
    }
}

/// After the disk is freed: restart the node if it exited or stopped a group.
pub async fn recover(cluster: &mut Cluster, id: usize) -> Result<Option<String>, String> {
    // Give a stopping group a moment to show in its status.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let node = cluster.node(id);
    let note = match node.state() {
        ProcessState::Exited(how) => Some(format!(
            "node {id} exited while its disk was full ({how}); restarted"
        )),
        _ => match node.status().await {
            Some(s) => {
                let stopped: Vec<String> = s
                    .groups
                    .iter()
                    .filter(|g| g.role == pb::Role::Shutdown as i32)
                    .map(|g| g.group.clone())
                    .collect();
                if stopped.is_empty() {
                    return Ok(None);
                }
                node.kill9().await;
                Some(format!(
                    "node {id} stopped group(s) {} on the full disk; restarted",
                    stopped.join(", ")
                ))
            }
            None => {
                node.kill9().await;
                Some(format!(
                    "node {id} did not answer after its disk was freed; restarted"
                ))
            }
        },
    };
    node.start()?;
    Ok(note)
}
