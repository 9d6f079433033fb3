//! # Tandem
//!
//! A polled-mode storage engine. Reactors, one per core, own every I/O from arrival to
//! completion and talk to each other only by messages, so the data path takes no lock
//! ([`reactor`]). Block devices, the NVMe-oF/TCP target and host, the copy-on-write store and
//! synchronous replication are built on them, each in its own module, bottom up:
//!
//! | module | owns |
//! | --- | --- |
//! | [`reactor`] | threads pinned per core, message rings, pollers, timers, adaptive parking, simulation |
//! | [`mem`] | DMA-able buffers, per-reactor buffer pools, scatter-gather lists |
//! | [`bdev`] | block devices: descriptors, per-reactor channels, malloc, null, uring and error backends |
//! | [`sys`] | the Linux system calls the runtime parks on (eventfd, timerfd, epoll) |
//! | [`logging`] | tracing set-up shared by the daemon, the CLI and the C ABI |
//! | [`inline_fn`] | closures stored inline: messages and completions without allocation |
//! | [`nvme`] | NVMe wire structures: SQE, CQE, status codes, opcodes |
//! | [`nvmf`] | the NVMe-oF target; so far the NVMe/TCP PDU codec, shared with the host |
//! | [`store`] | the copy-on-write store: volumes, snapshots, clones, block diffs, group commit |
//! | [`rpc`] | JSON-RPC 2.0 on a Unix socket with SPDK's method names; replays the start-up config |
//! | [`config`] | the JSON start-up configuration, in the shape of SPDK's `save_config` |
//!
//! The map of the whole design is `ARCHITECTURE.md`; this crate grows into it issue by issue.

pub mod bdev;
pub mod config;
pub mod host;
pub mod inline_fn;
pub mod logging;
pub mod mem;
pub mod nvme;
pub mod nvmf;
pub mod perf;
pub mod reactor;
pub mod repl;
pub mod rpc;
pub mod store;
pub mod sys;

/// The engine's version, as the daemon, the CLI and the C ABI report it.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
