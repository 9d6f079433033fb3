//! Core masks in the forms SPDK accepts: a hexadecimal mask (`0x3`, `3`), or a list of cores
//! and ranges, bracketed or not (`[0,1]`, `0-1`, `[0,2-3]`).

use std::fmt;

use super::{Error, Result};

/// The largest core id a mask may name. Bounds the parser's work on hostile input.
pub const MAX_CORE: usize = 1023;

/// A set of core ids, sorted and without duplicates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CoreMask {
    cores: Vec<usize>,
}

impl CoreMask {
    /// Parse a mask; the cores are not checked against the machine (see [`Self::check_present`]).
    pub fn parse(text: &str) -> Result<Self> {
        let s = text.trim();
        let bad = |why: &str| Error::BadCoreMask {
            mask: text.to_owned(),
            why: why.to_owned(),
        };
        if s.is_empty() {
            return Err(bad("empty"));
        }
        let mut cores = Vec::new();
        let is_list = s.starts_with('[') || s.contains(',') || s.contains('-');
        if is_list {
            let body = match (s.strip_prefix('['), s.strip_suffix(']')) {
                (Some(_), Some(_)) => &s[1..s.len() - 1],
                (None, None) => s,
                _ => return Err(bad("unbalanced brackets")),
            };
            for item in body.split(',') {
                let item = item.trim();
                let (lo, hi) = match item.split_once('-') {
                    Some((a, b)) => (parse_core(a, &bad)?, parse_core(b, &bad)?),
                    None => {
                        let c = parse_core(item, &bad)?;
                        (c, c)
                    }
                };
                if lo > hi {
                    return Err(bad("range runs backwards"));
                }
                cores.extend(lo..=hi);
            }
        } else {
            let hex = s
                .strip_prefix("0x")
                .or_else(|| s.strip_prefix("0X"))
                .unwrap_or(s);
            if hex.is_empty() || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(bad("not a hexadecimal mask"));
            }
            // Walk the digits from the least significant, four cores per digit.
            for (i, digit) in hex.bytes().rev().enumerate() {
                let nibble = (digit as char).to_digit(16).expect("checked hex digit");
                for bit in 0..4 {
                    if nibble & (1 << bit) != 0 {
                        let core = i * 4 + bit;
                        if core > MAX_CORE {
                            return Err(bad("names a core above 1023"));
                        }
                        cores.push(core);
                    }
                }
            }
        }
        cores.sort_unstable();
        cores.dedup();
        if cores.is_empty() {
            return Err(bad("selects no core"));
        }
        Ok(Self { cores })
    }

    /// A mask of the given cores (for code that builds masks rather than parsing them).
    pub fn from_cores(cores: impl IntoIterator<Item = usize>) -> Result<Self> {
        let mut cores: Vec<usize> = cores.into_iter().collect();
        cores.sort_unstable();
        cores.dedup();
        if cores.is_empty() || cores.iter().any(|&c| c > MAX_CORE) {
            return Err(Error::BadCoreMask {
                mask: format!("{cores:?}"),
                why: "empty or names a core above 1023".into(),
            });
        }
        Ok(Self { cores })
    }

    pub fn cores(&self) -> &[usize] {
        &self.cores
    }

    /// Fail with [`Error::CoreNotPresent`] when the mask names a core this process may not run on.
    pub fn check_present(&self) -> Result<()> {
        let available = available_cores();
        match self.cores.iter().find(|c| !available.contains(c)) {
            Some(&core) => Err(Error::CoreNotPresent { core, available }),
            None => Ok(()),
        }
    }
}

impl fmt::Display for CoreMask {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list: Vec<String> = self.cores.iter().map(|c| c.to_string()).collect();
        write!(f, "[{}]", list.join(","))
    }
}

fn parse_core(s: &str, bad: &dyn Fn(&str) -> Error) -> Result<usize> {
    let s = s.trim();
    if s.is_empty() || s.len() > 4 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad("a list item is not a core number"));
    }
    let core: usize = s
        .parse()
        .map_err(|_| bad("a list item is not a core number"))?;
    if core > MAX_CORE {
        return Err(bad("names a core above 1023"));
    }
    Ok(core)
}

/// The machine's online cores, sorted. Read from sysfs rather than from an affinity mask,
/// which belongs to the calling thread and shrinks once that thread is pinned.
pub fn available_cores() -> Vec<usize> {
    if let Ok(text) = std::fs::read_to_string("/sys/devices/system/cpu/online") {
        if let Ok(mask) = CoreMask::parse(&text) {
            return mask.cores;
        }
    }
    // SAFETY: sysconf takes a constant and reads no memory of ours.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    (0..n.max(1) as usize).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spdk_forms_parse_to_the_same_set() {
        for text in [
            "0x3", "3", "[0,1]", "0-1", "[0-1]", " 0x3 ", "0,1", "[1,0,1]",
        ] {
            assert_eq!(CoreMask::parse(text).unwrap().cores(), &[0, 1], "{text}");
        }
        assert_eq!(CoreMask::parse("0x10").unwrap().cores(), &[4]);
        assert_eq!(CoreMask::parse("[0,2-4]").unwrap().cores(), &[0, 2, 3, 4]);
        assert_eq!(CoreMask::parse("0xA").unwrap().cores(), &[1, 3]);
    }

    #[test]
    fn bad_masks_are_refused_with_a_reason() {
        for text in [
            "", "0x", "0x0", "zz", "[0,1", "0,1]", "[a]", "2-1", "[0,,1]", "[99999]", "-1",
        ] {
            let err = CoreMask::parse(text).unwrap_err();
            assert!(matches!(err, Error::BadCoreMask { .. }), "{text}: {err}");
        }
        // 257 hex digits would name core 1027.
        let huge = format!("0x1{}", "0".repeat(256));
        assert!(CoreMask::parse(&huge).is_err());
    }

    #[test]
    fn a_core_the_machine_lacks_is_reported() {
        let mask = CoreMask::parse("[1023]").unwrap();
        match mask.check_present() {
            Err(Error::CoreNotPresent { core, .. }) => assert_eq!(core, 1023),
            other => panic!("expected CoreNotPresent, got {other:?}"),
        }
        let first = available_cores()[0];
        CoreMask::from_cores([first])
            .unwrap()
            .check_present()
            .unwrap();
    }
}
