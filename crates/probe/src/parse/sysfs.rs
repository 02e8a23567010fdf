//! Pure parsers for `/sys/devices/system/cpu`: CPU lists and cache descriptions.

use crate::error::{ParseError, excerpt};
use crate::snapshot::CacheKind;

/// Parses a kernel CPU list (`0-3,8,10-11`) into CPU numbers, in order.
///
/// # Errors
/// Anything but comma-separated numbers and ranges; ranges over 65,536 CPUs.
pub fn parse_cpu_list(text: &str) -> Result<Vec<u32>, ParseError> {
    const INPUT: &str = "cpu list";
    const MAX_CPUS: u32 = 1 << 16;
    let text = text.trim();
    let bad = || ParseError::BadLine {
        input: INPUT,
        line: 1,
        expected: "CPU numbers and ranges such as `0-3,8`",
        found: excerpt(text),
    };
    let mut cpus = Vec::new();
    if text.is_empty() {
        return Ok(cpus);
    }
    for part in text.split(',') {
        let (first, last) = match part.split_once('-') {
            Some((a, b)) => (a.parse::<u32>(), b.parse::<u32>()),
            None => (part.parse::<u32>(), part.parse::<u32>()),
        };
        let (first, last) = (first.map_err(|_| bad())?, last.map_err(|_| bad())?);
        if first > last || last >= MAX_CPUS {
            return Err(bad());
        }
        cpus.extend(first..=last);
    }
    Ok(cpus)
}

/// Parses a cache `size` file (`32K`, `1M`, or a bare byte count) into bytes.
///
/// # Errors
/// Anything else.
pub fn parse_cache_size(text: &str) -> Result<u64, ParseError> {
    let text = text.trim();
    let bad = || ParseError::BadNumber {
        input: "cache size",
        line: 1,
        field: "size".to_owned(),
        found: excerpt(text),
    };
    let (digits, shift) = match text.as_bytes().last() {
        Some(b'K') => (&text[..text.len() - 1], 10),
        Some(b'M') => (&text[..text.len() - 1], 20),
        Some(b'G') => (&text[..text.len() - 1], 30),
        _ => (text, 0),
    };
    let value: u64 = digits.parse().map_err(|_| bad())?;
    value.checked_mul(1 << shift).ok_or_else(bad)
}

/// Parses a cache `type` file (`Data`, `Instruction`, `Unified`).
///
/// # Errors
/// Any other word.
pub fn parse_cache_kind(text: &str) -> Result<CacheKind, ParseError> {
    match text.trim() {
        "Data" => Ok(CacheKind::Data),
        "Instruction" => Ok(CacheKind::Instruction),
        "Unified" => Ok(CacheKind::Unified),
        other => Err(ParseError::BadLine {
            input: "cache type",
            line: 1,
            expected: "`Data`, `Instruction` or `Unified`",
            found: excerpt(other),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpu_list("0-1\n").unwrap(), vec![0, 1]);
        assert_eq!(parse_cpu_list("0,2-4,7").unwrap(), vec![0, 2, 3, 4, 7]);
        assert_eq!(parse_cpu_list("").unwrap(), Vec::<u32>::new());
        assert!(parse_cpu_list("3-1").is_err());
        assert!(parse_cpu_list("0-99999999").is_err());
        assert!(parse_cpu_list("a").is_err());
    }

    #[test]
    fn cache_sizes() {
        assert_eq!(parse_cache_size("32K\n").unwrap(), 32 << 10);
        assert_eq!(parse_cache_size("32768K").unwrap(), 32 << 20);
        assert_eq!(parse_cache_size("2M").unwrap(), 2 << 20);
        assert_eq!(parse_cache_size("4096").unwrap(), 4096);
        assert!(parse_cache_size("K").is_err());
        assert_eq!(parse_cache_kind("Unified\n").unwrap(), CacheKind::Unified);
        assert!(parse_cache_kind("Trace").is_err());
    }
}
