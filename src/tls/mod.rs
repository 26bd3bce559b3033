//! TLS for the three ports, with certificates reloaded from disk while the node runs.
//!
//! - `files`: a certificate, key and CA as files, turned into rustls configurations;
//!   [`Reloading`] rebuilds a configuration when a file changes on disk.
//! - `accept`: the server side. Accepted TCP connections go through a TLS handshake
//!   (concurrently, with a deadline) before tonic or axum sees them; a failed handshake
//!   is logged with its reason and never reaches a service.
//! - `connect`: the calling side of the peer port: every new connection to a peer
//!   presents this node's certificate and checks the peer's against the cluster CA.
//!
//! Rotation (cert-manager rewrites the files of a mounted secret): each new connection
//! asks [`Reloading::current`], which compares the files' size, modification time and
//! inode with those it last loaded and rebuilds the configuration when they differ.
//! Connections already open keep the certificate they were made with; a half-written
//! set of files (a key that does not match the certificate yet) is logged and the
//! previous configuration stays in use, so a rotation never takes a port down.
//!
//! What this module does not do: it does not decide who may do what. The peer port
//! requires a client certificate signed by the cluster CA (mutual TLS) and trusts any
//! such certificate as a member; the client port authenticates users with tokens
//! (`auth`), not certificates.

mod accept;
mod connect;
mod files;

pub use accept::{tls_incoming, ServerConn};
pub use connect::connector;
pub use files::{CertFiles, Reloading};
