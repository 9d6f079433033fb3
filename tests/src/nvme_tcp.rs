//! The host the protocol tests drive: the engine's blocking queue ([`SyncQueue`]), with
//! tandemd's port and a test host NQN filled in and every step unwrapped, so that a test reads
//! as the exchange it checks.

use std::ops::{Deref, DerefMut};
use std::time::Duration;

use tandem::host::sync::SyncQueue;
pub use tandem::host::sync::{rw_sqe, sgl, Done, Pdu};
use tandem::nvme::Sqe;

pub const HOSTNQN: &str = "nqn.2014-08.org.nvmexpress:uuid:11111111-2222-3333-4444-555555555555";
const HOSTID: [u8; 16] = [0x11; 16];
const TIMEOUT: Duration = Duration::from_secs(10);

pub struct Host(pub SyncQueue);

impl Deref for Host {
    type Target = SyncQueue;
    fn deref(&self) -> &SyncQueue {
        &self.0
    }
}

impl DerefMut for Host {
    fn deref_mut(&mut self) -> &mut SyncQueue {
        &mut self.0
    }
}

fn addr(port: u16) -> String {
    format!("127.0.0.1:{port}")
}

impl Host {
    /// A TCP connection, not yet initialised.
    pub fn tcp(port: u16) -> Host {
        Host(SyncQueue::tcp(&addr(port), TIMEOUT).expect("connect to tandemd"))
    }

    /// Connected, with ICReq/ICResp done asking for these digests.
    pub fn new(port: u16, header_digest: bool, data_digest: bool) -> Host {
        Host(
            SyncQueue::new(&addr(port), header_digest, data_digest, TIMEOUT)
                .expect("connect and ICReq"),
        )
    }

    /// The next PDU, or None if the target closed the connection.
    pub fn recv(&mut self) -> Option<Pdu> {
        self.0.recv().ok()
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.0.send(bytes).expect("send to tandemd");
    }

    /// Run a command with in-capsule data up to `inline_max`.
    pub fn run(&mut self, sqe: Sqe, out: &[u8], want: usize, inline_max: usize) -> Done {
        let saved = self.0.inline_max;
        self.0.inline_max = inline_max;
        let d = self.0.run(sqe, out, want).expect("the target answers");
        self.0.inline_max = saved;
        d
    }

    pub fn connect(
        &mut self,
        subnqn: &str,
        hostnqn: &str,
        qid: u16,
        cntlid: u16,
        kato: u32,
    ) -> Done {
        self.0
            .connect(subnqn, hostnqn, HOSTID, qid, cntlid, 31, kato)
            .expect("the target answers Connect")
    }

    /// Admin Connect (dynamic controller) and enable: the controller ID.
    pub fn admin(&mut self, subnqn: &str, kato: u32) -> u16 {
        self.0
            .admin(subnqn, HOSTNQN, HOSTID, kato)
            .expect("admin queue bring-up")
    }

    pub fn prop_get(&mut self, offset: u32, wide: bool) -> u64 {
        self.0.prop_get(offset, wide).expect("Property Get")
    }

    pub fn prop_set(&mut self, offset: u32, value: u64) {
        self.0.prop_set(offset, value).expect("Property Set")
    }

    pub fn identify(&mut self, cns: u8, nsid: u32) -> Done {
        self.0
            .identify(cns, nsid)
            .expect("the target answers Identify")
    }

    pub fn get_log(&mut self, lid: u8, offset: u64, len: usize) -> Done {
        self.0
            .get_log(lid, offset, len)
            .expect("the target answers Get Log Page")
    }

    pub fn write(&mut self, nsid: u32, slba: u64, block: usize, data: &[u8]) -> Done {
        let sqe = rw_sqe(
            tandem::nvme::io::WRITE,
            nsid,
            slba,
            (data.len() / block) as u32,
        );
        self.run(sqe, data, 0, 8192)
    }

    pub fn read(&mut self, nsid: u32, slba: u64, block: usize, len: usize) -> Done {
        let sqe = rw_sqe(tandem::nvme::io::READ, nsid, slba, (len / block) as u32);
        self.run(sqe, &[], len, 0)
    }
}

/// The first `bytes` of namespace 1 of `nqn` on `port`, in 128 KiB reads, through a controller
/// of its own.
pub fn read_all(port: u16, nqn: &str, bytes: u64) -> Vec<u8> {
    let mut admin = Host::new(port, false, false);
    let cntlid = admin.admin(nqn, 30_000);
    let mut io = Host::new(port, false, false);
    let c = io.connect(nqn, HOSTNQN, 1, cntlid, 0);
    assert!(c.status().is_success(), "I/O connect to {nqn}");
    let chunk = 128 << 10;
    let mut out = Vec::with_capacity(bytes as usize);
    for i in 0..bytes / chunk {
        let d = io.read(1, i * chunk / 4096, 4096, chunk as usize);
        assert!(d.status().is_success(), "read {nqn} at {}", i * chunk);
        out.extend_from_slice(&d.data);
    }
    out
}
