//! Runs the grpcurl examples of README.md against a live standalone node, and checks
//! `grpcurl list` and the health service — so the documentation cannot rot. The
//! examples with authentication run against a node started with `--auth`.
//!
//! Needs `grpcurl` on PATH (`scripts/test.sh` installs it), and `jq` for the
//! authentication examples.

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

/// The `(command, expected substrings)` pairs of the README's example block between
/// `<!-- NAME:begin -->` and `<!-- NAME:end -->`: every line of its shell block is a
/// command, but for comments, and `# => ` lines are what the command before prints.
fn readme_examples(name: &str) -> Vec<(String, Vec<String>)> {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let start = readme
        .find(&format!("<!-- {name}:begin -->"))
        .expect("begin marker");
    let end = readme
        .find(&format!("<!-- {name}:end -->"))
        .expect("end marker");
    let mut examples: Vec<(String, Vec<String>)> = Vec::new();
    for line in readme[start..end].lines() {
        if let Some(expect) = line.strip_prefix("# => ") {
            examples
                .last_mut()
                .expect("expectation after a command")
                .1
                .push(expect.to_string());
        } else if !(line.is_empty()
            || line.starts_with('#')
            || line.starts_with("```")
            || line.starts_with("<!--"))
        {
            examples.push((line.to_string(), Vec::new()));
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

    let examples = readme_examples("readme-examples");
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

const ADMIN_PASSWORD: &str = "readme-admin-secret";

/// The authentication examples, run as one shell script (the token of one line is
/// used by the next) against a node with `--auth`; each command's output is checked
/// for its `# => ` lines.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readme_auth_grpcurl_examples_work() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let password_file = dir.path().join("admin-password");
    std::fs::write(&password_file, format!("{ADMIN_PASSWORD}\n")).unwrap();
    let mut p = Proc::new(1, dir.path());
    p.extra_args = vec![
        "--auth".into(),
        "--initial-admin-password-file".into(),
        password_file.to_str().unwrap().into(),
    ];
    p.start();
    let addr = p.client.clone();
    // Login answers UNAVAILABLE until the cluster's auth bootstrap (signing key and
    // first admin) is applied; that costs no failed-login budget.
    let login = format!(r#"{{"username":"admin","password":"{ADMIN_PASSWORD}"}}"#);
    wait_async("the admin can log in", DEADLINE, || async {
        grpcurl(&[
            "-plaintext",
            "-d",
            &login,
            &addr,
            "nacosd.v1.AuthService/Login",
        ])
        .1
        .contains("\"token\"")
    })
    .await;

    let examples = readme_examples("readme-auth-examples");
    assert!(
        examples.len() >= 8,
        "README auth examples found: {}",
        examples.len()
    );
    let mut script = String::from("exec 2>&1\n");
    for (i, (cmd, _)) in examples.iter().enumerate() {
        script.push_str(&format!("echo '@@@ {i}'\n{cmd}\n"));
    }
    let out = Command::new("sh")
        .arg("-c")
        .arg(&script)
        .env("ADDR", &addr)
        .env("ADMIN_PASSWORD", ADMIN_PASSWORD)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let mut outputs = vec![String::new(); examples.len()];
    let mut current = None;
    for line in text.lines() {
        match line
            .strip_prefix("@@@ ")
            .and_then(|i| i.parse::<usize>().ok())
        {
            Some(i) => current = Some(i),
            None => {
                if let Some(i) = current {
                    outputs[i].push_str(line);
                    outputs[i].push('\n');
                }
            }
        }
    }
    for ((cmd, expects), printed) in examples.iter().zip(&outputs) {
        if expects.is_empty() {
            // An assignment (TOKEN=$(...)): it prints nothing when it works.
            assert!(printed.trim().is_empty(), "`{cmd}` printed:\n{printed}");
        }
        for e in expects {
            assert!(
                printed.contains(e),
                "`{cmd}` should print {e:?}, printed:\n{printed}"
            );
        }
    }
    assert!(p.terminate().unwrap().success());
}
