//! Runs the grpcurl examples of README.md against a live standalone node, and checks
//! `grpcurl list` and the health service — so the documentation cannot rot.
//!
//! Needs `grpcurl` on PATH (`scripts/test.sh` installs it).

use std::process::Command;
use std::time::Duration;

use crate::common::process::*;

const DEADLINE: Duration = Duration::from_secs(60);

fn grpcurl(args: &[&str]) -> (bool, String) {
    let out = Command::new("grpcurl")
        .args(args)
        .output()
        .expect("grpcurl must be installed (scripts/setup.sh with NACOSD_SETUP_GRPCURL=1)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// The `(command, expected substrings)` pairs of the README's example block.
fn readme_examples() -> Vec<(String, Vec<String>)> {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let start = readme
        .find("<!-- readme-examples:begin -->")
        .expect("begin marker");
    let end = readme
        .find("<!-- readme-examples:end -->")
        .expect("end marker");
    let mut examples: Vec<(String, Vec<String>)> = Vec::new();
    for line in readme[start..end].lines() {
        if let Some(cmd) = line.strip_prefix("grpcurl ") {
            examples.push((format!("grpcurl {cmd}"), Vec::new()));
        } else if let Some(expect) = line.strip_prefix("# => ") {
            examples
                .last_mut()
                .expect("expectation after a command")
                .1
                .push(expect.to_string());
        }
    }
    examples
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readme_grpcurl_examples_work() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let mut p = Proc::new(1, dir.path());
    p.start();
    let addr = p.client.clone();
    wait_async("node serving", DEADLINE, || async {
        grpcurl(&["-plaintext", &addr, "grpc.health.v1.Health/Check"])
            .1
            .contains("SERVING")
    })
    .await;

    // Reflection: services are listed without .proto files.
    let (ok, list) = grpcurl(&["-plaintext", &addr, "list"]);
    assert!(ok, "{list}");
    for svc in [
        "nacosd.v1.ConfigService",
        "nacosd.v1.NamingService",
        "nacosd.v1.SessionService",
        "nacosd.v1.DbService",
        "nacosd.v1.ClusterService",
        "grpc.health.v1.Health",
    ] {
        assert!(list.contains(svc), "{svc} missing from:\n{list}");
    }
    assert!(
        !list.contains("nacosd.v1.RaftPeer"),
        "the peer service is not on the client port"
    );
    let (ok, desc) = grpcurl(&["-plaintext", &addr, "describe", "nacosd.v1.ConfigKey"]);
    assert!(ok && desc.contains("data_id"), "{desc}");
    // Issue #11.12: `describe` with no symbol resolves every listed service, the
    // reflection service itself included.
    let (ok, all) = grpcurl(&["-plaintext", &addr, "describe"]);
    assert!(ok, "grpcurl describe failed:\n{all}");
    for svc in list.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let (ok, desc) = grpcurl(&["-plaintext", &addr, "describe", svc]);
        assert!(
            ok && desc.contains("is a service"),
            "describe {svc}:\n{desc}"
        );
    }

    let examples = readme_examples();
    assert!(
        examples.len() >= 8,
        "README examples found: {}",
        examples.len()
    );
    for (cmd, expects) in examples {
        assert!(!expects.is_empty(), "example without expectation: {cmd}");
        let out = Command::new("sh")
            .arg("-c")
            .arg(&cmd)
            .env("ADDR", &addr)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        for e in expects {
            assert!(
                text.contains(&e),
                "`{cmd}` should print {e:?}, printed:\n{text}"
            );
        }
    }
    assert!(p.terminate().unwrap().success());
}
