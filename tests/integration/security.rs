//! Issue #18: TLS on the client port, mutual TLS between peers, certificate reload,
//! the plaintext-cluster refusal, and client authentication and authorization.
//!
//! Certificates are made by `deploy/gen-dev-certs.sh` (the openssl CLI), so the script
//! the docs point operators to is exercised too.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::{pem::PemObject, CertificateDer, ServerName};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

use crate::common::*;
use nacosd::codec;
use nacosd::config::Config;
use nacosd::pb;
use nacosd::peer::channels::{Lane, PeerChannels};
use nacosd::peer::PeerClient;
use nacosd::raft::identity::{Identity, IdentityCell};
use nacosd::raft::types::{TypeConfig, Vote};
use nacosd::tls::{CertFiles, Reloading};

/// Run `deploy/gen-dev-certs.sh` into `dir` for `names`.
pub fn gen_certs(dir: &Path, names: &[&str]) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/gen-dev-certs.sh");
    let out = std::process::Command::new("bash")
        .arg(script)
        .arg(dir)
        .args(names)
        .output()
        .expect("run deploy/gen-dev-certs.sh (needs the openssl CLI)");
    assert!(
        out.status.success(),
        "gen-dev-certs.sh failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn node_files(dir: &Path, name: &str, with_ca: bool) -> CertFiles {
    CertFiles {
        cert: dir.join(format!("{name}.pem")),
        key: dir.join(format!("{name}-key.pem")),
        ca: with_ca.then(|| dir.join("ca.pem")),
    }
}

fn certs_dir() -> (tempfile::TempDir, PathBuf) {
    let td = tempfile::tempdir().expect("tempdir");
    let dir = td.path().join("certs");
    gen_certs(&dir, &["n1", "n2", "n3"]);
    (td, dir)
}

/// A TLS handshake with `addr` that trusts `ca`, returning the server's certificate.
async fn handshake(addr: SocketAddr, ca: &Path) -> std::io::Result<CertificateDer<'static>> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await?;
    Ok(tls.get_ref().1.peer_certificates().unwrap()[0].clone())
}

fn first_cert(path: &Path) -> CertificateDer<'static> {
    CertificateDer::pem_file_iter(path)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
}

async fn health(endpoint: Endpoint) -> Result<(), String> {
    let channel = endpoint
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .map_err(|e| format!("connect: {e:?}"))?;
    tonic_health::pb::health_client::HealthClient::new(channel)
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .map(|_| ())
        .map_err(|e| format!("check: {e:?}"))
}

fn tls_endpoint(addr: SocketAddr, ca: &Path) -> Endpoint {
    let ca = std::fs::read(ca).unwrap();
    Endpoint::from_shared(format!("https://localhost:{}", addr.port()))
        .unwrap()
        .tls_config(
            ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(ca))
                .domain_name("localhost"),
        )
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn client_port_serves_tls_to_clients_that_trust_the_ca() {
    let (_td, dir) = certs_dir();
    let (_other_td, other) = certs_dir();
    let c = TestCluster::start(1, with_kv, |cfg| {
        cfg.client_tls = Some(node_files(&dir, "n1", false))
    })
    .await;
    let addr = c.server(1).client_addr;

    health(tls_endpoint(addr, &dir.join("ca.pem")))
        .await
        .expect("a client that trusts the CA is served");
    let err = health(tls_endpoint(addr, &other.join("ca.pem")))
        .await
        .expect_err("a client that trusts another CA must fail");
    assert!(err.contains("connect"), "{err}");
    let err = health(Endpoint::from_shared(format!("http://{addr}")).unwrap())
        .await
        .expect_err("plaintext must fail on a TLS port");
    assert!(!err.is_empty());
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rotated_certificates_are_used_for_new_connections() {
    let (_td, dir) = certs_dir();
    let c = TestCluster::start(1, with_kv, |cfg| {
        cfg.client_tls = Some(node_files(&dir, "n1", false))
    })
    .await;
    let addr = c.server(1).client_addr;
    let ca = dir.join("ca.pem");
    let before = first_cert(&dir.join("n1.pem"));
    assert_eq!(handshake(addr, &ca).await.unwrap(), before);
    let open = tls_endpoint(addr, &ca).connect().await.unwrap();

    // A second run issues new certificates under the same CA, renamed into place.
    gen_certs(&dir, &["n1"]);
    let after = first_cert(&dir.join("n1.pem"));
    assert_ne!(before, after, "the script made a new certificate");
    assert_eq!(
        handshake(addr, &ca).await.unwrap(),
        after,
        "a new connection gets the new certificate, without a restart"
    );
    // A connection made before the rotation keeps working.
    tonic_health::pb::health_client::HealthClient::new(open)
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .expect("an open connection survives the rotation");

    // A broken file (a half-finished rotation) keeps the last good certificate.
    std::fs::write(dir.join("n1.pem"), "not a certificate").unwrap();
    assert_eq!(handshake(addr, &ca).await.unwrap(), after);
    c.shutdown().await;
}

fn mtls(dir: &Path) -> impl Fn(&mut Config) + '_ {
    move |cfg: &mut Config| {
        cfg.insecure_peer = false;
        cfg.peer_tls = Some(node_files(dir, &format!("n{}", cfg.node_id), true));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn peers_need_a_certificate_signed_by_the_cluster_ca() {
    let (_td, dir) = certs_dir();
    let (_rogue_td, rogue) = certs_dir();
    let c = TestCluster::start(3, with_kv, mtls(&dir)).await;
    let leader = c.wait_for_leader(KV).await;
    put(c.node(leader), KV, "k", "v")
        .await
        .expect("a write commits over mutual TLS");
    let follower = c.other_than(leader);
    let cluster_id = c.node(leader).identity().cluster_id().unwrap();
    let addr = c.nodes[&follower].config.advertise_peer.clone();
    let term = c.metrics(follower, KV).current_term;

    // An impostor that knows the cluster id and a member's node id asks for a vote in
    // a much higher term: with no certificate, and with one from another CA.
    let without_cert = PeerChannels::default();
    let rogue_cert = PeerChannels::new(Some(
        Reloading::client(CertFiles {
            ca: Some(dir.join("ca.pem")),
            ..node_files(&rogue, "n1", false)
        })
        .unwrap(),
    ));
    for (what, channels) in [("no certificate", without_cert), ("another CA", rogue_cert)] {
        let caller = PeerClient::new(
            leader,
            IdentityCell::new(Some(Identity {
                cluster_id,
                node_id: leader,
            })),
            64 << 20,
            channels,
        );
        let rpc =
            openraft::raft::VoteRequest::<TypeConfig>::new(Vote::new(term + 100, leader), None);
        let req = caller.request(
            pb::RaftRequest {
                group: KV.to_string(),
                payload: codec::encode(&rpc),
            },
            Some(Duration::from_secs(3)),
        );
        let res = caller.raft(&addr, Lane::Control).unwrap().vote(req).await;
        assert!(
            res.is_err(),
            "{what}: the vote request reached the node: {res:?}"
        );
    }
    assert!(
        c.metrics(follower, KV).current_term < term + 100,
        "the refused vote requests changed nothing"
    );
    put(c.node(leader), KV, "k2", "v2")
        .await
        .expect("the cluster still works");
    c.shutdown().await;
}

#[test]
fn a_plaintext_cluster_needs_insecure_peer() {
    let mut cfg = test_config(1, PathBuf::from("unused"));
    cfg.insecure_peer = false;
    cfg.initial_members = [(1, "a:1".to_string()), (2, "b:1".to_string())].into();
    cfg.advertise_peer = "a:1".into();
    let err = cfg.validate().expect_err("plaintext cluster refused");
    assert!(err.to_string().contains("--insecure-peer"), "{err}");
    assert!(err.to_string().contains("peer-ca"), "{err}");
    cfg.insecure_peer = true;
    cfg.validate().expect("allowed with --insecure-peer");
    cfg.insecure_peer = false;
    cfg.peer_tls = Some(node_files(Path::new("/certs"), "n1", true));
    cfg.validate().expect("allowed with mutual TLS");
    // A node that joins is part of a cluster too.
    let mut joining = test_config(4, PathBuf::from("unused"));
    joining.insecure_peer = false;
    joining.join = Some("a:1".into());
    assert!(joining.validate().is_err());
}
