//! The queue of PDUs waiting for a socket, shared by the target's connections and the host's
//! queues: header bytes (digest and padding included) kept inline, data borrowed from the
//! owner's command slot or owned, a data digest; written with `writev` and resumed where a
//! short write stopped. Pushing allocates nothing once the queue has its capacity.

use std::collections::VecDeque;
use std::io::{IoSlice, Write};

use super::pdu::{self, DIGEST_LEN};

/// Slices per `writev`.
const IOV_MAX: usize = 64;
/// The largest header the queue holds: a TermReq with the offending header.
pub const HEAD_MAX: usize = pdu::MAX_TERM_REQ_PLEN as usize;

pub enum Body {
    None,
    /// `len` bytes of slot `slot`'s data, from byte `off`.
    Slot {
        slot: u16,
        off: u32,
        len: u32,
    },
    Owned(Vec<u8>),
}

impl Body {
    fn len(&self) -> usize {
        match self {
            Body::None => 0,
            Body::Slot { len, .. } => *len as usize,
            Body::Owned(v) => v.len(),
        }
    }
}

/// One PDU.
pub struct Out {
    head: [u8; HEAD_MAX],
    head_len: u16,
    pub body: Body,
    tail: [u8; DIGEST_LEN],
    tail_len: u8,
    /// Report this slot as released once the PDU is on the wire (its buffer is the body).
    pub release: Option<u16>,
}

impl Out {
    fn total(&self) -> usize {
        self.head_len as usize + self.body.len() + self.tail_len as usize
    }

    /// Pad the header with zeros to `len` bytes (where PDO puts the data).
    pub fn pad_head_to(&mut self, len: usize) {
        debug_assert!(len <= HEAD_MAX && len >= self.head_len as usize);
        self.head_len = len as u16;
    }

    /// Follow the data with its digest.
    pub fn set_data_digest(&mut self, digest: u32) {
        self.tail = digest.to_le_bytes();
        self.tail_len = DIGEST_LEN as u8;
    }
}

/// What a flush came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flushed {
    /// Nothing could be written (the socket is full, or nothing is queued).
    Nothing,
    Some,
    /// The socket failed or the peer closed it.
    Failed,
}

#[derive(Default)]
pub struct SendQueue {
    q: VecDeque<Out>,
    /// Bytes of the first entry already written.
    sent: usize,
}

impl SendQueue {
    pub fn with_capacity(n: usize) -> SendQueue {
        SendQueue {
            q: VecDeque::with_capacity(n),
            sent: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.q.len()
    }

    pub fn is_empty(&self) -> bool {
        self.q.is_empty()
    }

    pub fn reserve(&mut self, n: usize) {
        self.q.reserve(n);
    }

    pub fn clear(&mut self) {
        self.q.clear();
        self.sent = 0;
    }

    /// Queue a PDU whose header is `head`, with a header digest after it if `digest`.
    pub fn push(&mut self, head: &[u8], digest: bool) -> &mut Out {
        let mut o = Out {
            head: [0; HEAD_MAX],
            head_len: head.len() as u16,
            body: Body::None,
            tail: [0; DIGEST_LEN],
            tail_len: 0,
            release: None,
        };
        o.head[..head.len()].copy_from_slice(head);
        if digest {
            o.head[head.len()..head.len() + DIGEST_LEN]
                .copy_from_slice(&pdu::crc32c(head).to_le_bytes());
            o.head_len += DIGEST_LEN as u16;
        }
        self.q.push_back(o);
        self.q.back_mut().expect("just pushed")
    }

    /// Write what the socket takes. `data(slot)` is a slot's buffer; the slots whose PDUs went
    /// out whole are appended to `released`.
    pub fn flush<'a>(
        &mut self,
        w: &mut impl Write,
        data: impl Fn(u16) -> &'a [u8],
        released: &mut Vec<u16>,
    ) -> Flushed {
        let mut result = Flushed::Nothing;
        while !self.q.is_empty() {
            let written = {
                let mut iov = [IoSlice::new(&[]); IOV_MAX];
                let mut n = 0;
                let mut skip = self.sent;
                'fill: for o in &self.q {
                    let body: &[u8] = match &o.body {
                        Body::None => &[],
                        Body::Slot { slot, off, len } => {
                            let d = data(*slot);
                            &d[*off as usize..(*off + *len) as usize]
                        }
                        Body::Owned(v) => v,
                    };
                    for part in [
                        &o.head[..o.head_len as usize],
                        body,
                        &o.tail[..o.tail_len as usize],
                    ] {
                        if skip >= part.len() {
                            skip -= part.len();
                            continue;
                        }
                        iov[n] = IoSlice::new(&part[skip..]);
                        skip = 0;
                        n += 1;
                        if n == IOV_MAX {
                            break 'fill;
                        }
                    }
                }
                match w.write_vectored(&iov[..n]) {
                    Ok(0) => return Flushed::Failed,
                    Ok(written) => written,
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
                        ) =>
                    {
                        break
                    }
                    Err(_) => return Flushed::Failed,
                }
            };
            result = Flushed::Some;
            self.consume(written, released);
        }
        result
    }

    fn consume(&mut self, mut n: usize, released: &mut Vec<u16>) {
        while n > 0 {
            let left = self.q.front().expect("written bytes were queued").total() - self.sent;
            if n < left {
                self.sent += n;
                return;
            }
            n -= left;
            self.sent = 0;
            if let Some(s) = self.q.pop_front().and_then(|o| o.release) {
                released.push(s);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A socket that takes at most `cap` bytes per write.
    struct Trickle {
        cap: usize,
        got: Vec<u8>,
    }

    impl Write for Trickle {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            if self.cap == 0 {
                return Err(std::io::ErrorKind::WouldBlock.into());
            }
            let n = b.len().min(self.cap);
            self.got.extend_from_slice(&b[..n]);
            Ok(n)
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn short_writes_resume_where_they_stopped_and_release_slots_once_sent() {
        let slot_data = [7u8; 100];
        let mut q = SendQueue::with_capacity(4);
        q.push(&[1, 2, 3], false);
        let o = q.push(&[4, 5], true);
        o.body = Body::Slot {
            slot: 9,
            off: 10,
            len: 50,
        };
        o.set_data_digest(0xAABBCCDD);
        o.release = Some(9);
        q.push(&[6], false).body = Body::Owned(vec![8; 5]);
        let mut sock = Trickle {
            cap: 7,
            got: vec![],
        };
        let mut released = Vec::new();
        let mut rounds = 0;
        while !q.is_empty() {
            assert_ne!(
                q.flush(&mut sock, |_| &slot_data[..], &mut released),
                Flushed::Failed
            );
            rounds += 1;
        }
        assert!(
            rounds == 1,
            "a flush keeps writing while the socket takes bytes"
        );
        let mut want = vec![1, 2, 3, 4, 5];
        want.extend(pdu::crc32c(&[4, 5]).to_le_bytes());
        want.extend([7u8; 50]);
        want.extend(0xAABBCCDDu32.to_le_bytes());
        want.extend([6, 8, 8, 8, 8, 8]);
        assert_eq!(sock.got, want);
        assert_eq!(released, vec![9]);
        sock.cap = 0;
        q.push(&[1], false);
        assert_eq!(
            q.flush(&mut sock, |_| &[][..], &mut released),
            Flushed::Nothing
        );
        assert_eq!(q.len(), 1);
    }
}
