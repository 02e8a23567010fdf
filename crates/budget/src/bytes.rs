//! Byte counts and sizes: `Bytes`, `Share` of a total, and the `Size` a profile writes.

use std::fmt;
use std::str::FromStr;

use serde::{Serialize, Serializer};

/// A count of bytes.
///
/// `Display` picks the largest binary unit that keeps the number at or above one and prints at
/// most two decimals (`1.5 GiB`, `512 MiB`, `100 B`). `FromStr` accepts `4096`, `4096B`,
/// `512MiB`, `1.5 GiB`, `10kB`, `2GB`; binary (`KiB` `MiB` `GiB` `TiB`) and decimal (`kB`/`KB`
/// `MB` `GB` `TB`) units are spelled exactly so, since a lowercase `mb` is ambiguous.
/// Serializes as a plain integer, so JSON readers get exact bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Bytes(pub u64);

impl Bytes {
    /// No bytes.
    pub const ZERO: Bytes = Bytes(0);
    /// One kibibyte, 1024 bytes.
    pub const KIB: Bytes = Bytes(1 << 10);
    /// One mebibyte.
    pub const MIB: Bytes = Bytes(1 << 20);
    /// One gibibyte.
    pub const GIB: Bytes = Bytes(1 << 30);
    /// One tebibyte.
    pub const TIB: Bytes = Bytes(1 << 40);

    /// `n` KiB, saturating at `u64::MAX`.
    #[must_use]
    pub const fn kib(n: u64) -> Bytes {
        Bytes(n.saturating_mul(1 << 10))
    }

    /// `n` MiB, saturating at `u64::MAX`.
    #[must_use]
    pub const fn mib(n: u64) -> Bytes {
        Bytes(n.saturating_mul(1 << 20))
    }

    /// `n` GiB, saturating at `u64::MAX`.
    #[must_use]
    pub const fn gib(n: u64) -> Bytes {
        Bytes(n.saturating_mul(1 << 30))
    }

    /// The count as a plain integer.
    #[must_use]
    pub const fn get(self) -> u64 {
        self.0
    }

    /// `self + rhs`, or `None` on overflow.
    #[must_use]
    pub const fn checked_add(self, rhs: Bytes) -> Option<Bytes> {
        match self.0.checked_add(rhs.0) {
            Some(v) => Some(Bytes(v)),
            None => None,
        }
    }

    /// `self - rhs`, or `None` when `rhs` is larger.
    #[must_use]
    pub const fn checked_sub(self, rhs: Bytes) -> Option<Bytes> {
        match self.0.checked_sub(rhs.0) {
            Some(v) => Some(Bytes(v)),
            None => None,
        }
    }

    /// `self + rhs`, stopping at `u64::MAX`.
    #[must_use]
    pub const fn saturating_add(self, rhs: Bytes) -> Bytes {
        Bytes(self.0.saturating_add(rhs.0))
    }

    /// `self - rhs`, stopping at zero.
    #[must_use]
    pub const fn saturating_sub(self, rhs: Bytes) -> Bytes {
        Bytes(self.0.saturating_sub(rhs.0))
    }
}

impl fmt::Display for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [(&str, u64); 4] = [
            ("TiB", 1 << 40),
            ("GiB", 1 << 30),
            ("MiB", 1 << 20),
            ("KiB", 1 << 10),
        ];
        for (name, unit) in UNITS {
            if self.0 >= unit {
                let unit = u128::from(unit);
                let hundredths = (u128::from(self.0) * 100 + unit / 2) / unit;
                let (whole, frac) = (hundredths / 100, hundredths % 100);
                return match frac {
                    0 => write!(f, "{whole} {name}"),
                    f10 if f10 % 10 == 0 => write!(f, "{whole}.{} {name}", f10 / 10),
                    _ => write!(f, "{whole}.{frac:02} {name}"),
                };
            }
        }
        write!(f, "{} B", self.0)
    }
}

impl Serialize for Bytes {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u64(self.0)
    }
}

impl FromStr for Bytes {
    type Err = SizeError;

    fn from_str(text: &str) -> Result<Bytes, SizeError> {
        match text.parse::<Size>()? {
            Size::Bytes(bytes) => Ok(bytes),
            Size::Share(_) => Err(SizeError::ShareNotAllowed {
                text: text.to_owned(),
            }),
        }
    }
}

/// A fraction of a total, from 0 to 1 inclusive, kept exactly in parts per billion.
///
/// # Invariants
/// `0 <= parts_per_billion <= 1_000_000_000`, so [`Share::of`] never exceeds its argument.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Share {
    parts_per_billion: u32,
}

const BILLION: u32 = 1_000_000_000;

impl Share {
    /// The whole total.
    pub const ALL: Share = Share {
        parts_per_billion: BILLION,
    };

    /// A share from a fraction such as `0.25`; rounds to the nearest billionth.
    ///
    /// # Errors
    /// [`SizeError::ShareOutOfRange`] unless `0 <= fraction <= 1` (NaN included).
    pub fn new(fraction: f64) -> Result<Share, SizeError> {
        if !(0.0..=1.0).contains(&fraction) {
            return Err(SizeError::ShareOutOfRange {
                text: fraction.to_string(),
            });
        }
        // In range [0, 1e9] after the check above, so the cast neither wraps nor saturates.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let parts_per_billion = (fraction * f64::from(BILLION)).round() as u32;
        Ok(Share { parts_per_billion })
    }

    /// The share as a fraction.
    #[must_use]
    pub fn fraction(self) -> f64 {
        f64::from(self.parts_per_billion) / f64::from(BILLION)
    }

    /// This share of `total`, rounded down.
    #[must_use]
    pub fn of(self, total: Bytes) -> Bytes {
        let part = u128::from(total.0) * u128::from(self.parts_per_billion) / u128::from(BILLION);
        // part <= total because parts_per_billion <= BILLION.
        Bytes(u64::try_from(part).unwrap_or(total.0))
    }
}

impl fmt::Display for Share {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.fraction())
    }
}

/// A size as a profile writes it: absolute bytes, or a share of the enclosing total.
///
/// Parsing: a number with a unit, or a plain integer, is bytes (`70GiB`, `4096`); a plain
/// number with a decimal point is a share (`0.5`, `1.0`), and so is a percentage (`12.5%`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Size {
    /// An absolute number of bytes.
    Bytes(Bytes),
    /// A fraction of the total it is measured against.
    Share(Share),
}

impl Size {
    /// The size in bytes, shares taken of `total`.
    #[must_use]
    pub fn resolve(self, total: Bytes) -> Bytes {
        match self {
            Size::Bytes(bytes) => bytes,
            Size::Share(share) => share.of(total),
        }
    }
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Size::Bytes(bytes) => bytes.fmt(f),
            Size::Share(share) => share.fmt(f),
        }
    }
}

/// Why a size could not be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SizeError {
    /// Nothing was written.
    #[error("empty size")]
    Empty,
    /// A minus sign: sizes are never negative.
    #[error("negative size `{text}`: sizes are zero or more")]
    Negative {
        /// The text as written.
        text: String,
    },
    /// The number part is missing or malformed.
    #[error("`{text}` is not a size: expected a number and an optional unit, such as `512MiB`")]
    NotANumber {
        /// The text as written.
        text: String,
    },
    /// A unit this crate does not know.
    #[error("unknown unit `{unit}` in `{text}`: use B, KiB, MiB, GiB, TiB, kB, MB, GB, TB or %")]
    UnknownUnit {
        /// The unit as written.
        unit: String,
        /// The whole text.
        text: String,
    },
    /// A fraction of a byte, such as `1.5B`.
    #[error("`{text}` is a fraction of a byte")]
    FractionalBytes {
        /// The text as written.
        text: String,
    },
    /// A share below 0 or above 1 (100%).
    #[error("share `{text}` is outside 0..=1 (0%..=100%)")]
    ShareOutOfRange {
        /// The text as written.
        text: String,
    },
    /// A share where only absolute bytes make sense (a total).
    #[error("`{text}` is a share, but an absolute size such as `64GiB` is needed here")]
    ShareNotAllowed {
        /// The text as written.
        text: String,
    },
    /// More than `u64::MAX` bytes.
    #[error("`{text}` does not fit in 64 bits of bytes")]
    TooLarge {
        /// The text as written.
        text: String,
    },
}

/// Longest size text accepted; anything longer is not a size someone meant.
const MAX_SIZE_TEXT: usize = 64;
/// Fraction digits beyond this cannot change a 64-bit result and are ignored.
const MAX_FRACTION_DIGITS: usize = 18;

impl FromStr for Size {
    type Err = SizeError;

    fn from_str(text: &str) -> Result<Size, SizeError> {
        let owned = || text.to_owned();
        let trimmed = text.trim();
        if trimmed.is_empty() {
            return Err(SizeError::Empty);
        }
        if trimmed.starts_with('-') {
            return Err(SizeError::Negative { text: owned() });
        }
        if trimmed.len() > MAX_SIZE_TEXT {
            return Err(SizeError::NotANumber { text: owned() });
        }
        let number_end = trimmed
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(trimmed.len());
        let (number, unit) = (&trimmed[..number_end], trimmed[number_end..].trim());
        let decimal =
            Decimal::parse(number).ok_or_else(|| SizeError::NotANumber { text: owned() })?;
        let multiplier: u64 = match unit {
            "" if decimal.has_point => return share_from(decimal, 1, owned),
            "%" => return share_from(decimal, 100, owned),
            "" | "B" => 1,
            "kB" | "KB" => 1_000,
            "MB" => 1_000_000,
            "GB" => 1_000_000_000,
            "TB" => 1_000_000_000_000,
            "KiB" => 1 << 10,
            "MiB" => 1 << 20,
            "GiB" => 1 << 30,
            "TiB" => 1 << 40,
            _ => {
                return Err(SizeError::UnknownUnit {
                    unit: unit.to_owned(),
                    text: owned(),
                });
            }
        };
        let whole = decimal.whole.checked_mul(u128::from(multiplier));
        let frac = decimal.fraction * u128::from(multiplier) / decimal.fraction_scale;
        if multiplier == 1 && decimal.fraction != 0 {
            return Err(SizeError::FractionalBytes { text: owned() });
        }
        whole
            .and_then(|w| w.checked_add(frac))
            .and_then(|v| u64::try_from(v).ok())
            .map(|v| Size::Bytes(Bytes(v)))
            .ok_or_else(|| SizeError::TooLarge { text: owned() })
    }
}

/// `decimal / divisor` as a share.
fn share_from(
    decimal: Decimal,
    divisor: u128,
    owned: impl Fn() -> String,
) -> Result<Size, SizeError> {
    let billion = u128::from(BILLION);
    let scaled = decimal
        .whole
        .checked_mul(billion)
        .map(|w| w + decimal.fraction * billion / decimal.fraction_scale)
        .map(|ppb| ppb / divisor);
    match scaled.and_then(|ppb| u32::try_from(ppb).ok()) {
        Some(parts_per_billion) if parts_per_billion <= BILLION => {
            Ok(Size::Share(Share { parts_per_billion }))
        }
        _ => Err(SizeError::ShareOutOfRange { text: owned() }),
    }
}

/// A non-negative decimal number, read exactly.
#[derive(Clone, Copy)]
struct Decimal {
    whole: u128,
    /// The fraction digits as an integer: `0.25` has fraction 25 and scale 100.
    fraction: u128,
    fraction_scale: u128,
    has_point: bool,
}

impl Decimal {
    fn parse(number: &str) -> Option<Decimal> {
        let (whole_text, fraction_text, has_point) = match number.split_once('.') {
            Some((w, f)) => (w, f, true),
            None => (number, "", false),
        };
        if whole_text.is_empty() && fraction_text.is_empty() || fraction_text.contains('.') {
            return None;
        }
        let whole = if whole_text.is_empty() {
            0
        } else {
            whole_text.parse::<u128>().ok()?
        };
        let kept = &fraction_text[..fraction_text.len().min(MAX_FRACTION_DIGITS)];
        let fraction = if kept.is_empty() {
            0
        } else {
            kept.parse::<u128>().ok()?
        };
        let exponent = u32::try_from(kept.len()).ok()?;
        Some(Decimal {
            whole,
            fraction,
            fraction_scale: 10u128.pow(exponent),
            has_point,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(text: &str) -> Result<Bytes, SizeError> {
        text.parse()
    }

    #[test]
    fn parses_binary_and_decimal_units() {
        assert_eq!(bytes("512MiB"), Ok(Bytes::mib(512)));
        assert_eq!(bytes("70GiB"), Ok(Bytes::gib(70)));
        assert_eq!(bytes("1.5 GiB"), Ok(Bytes(3 << 29)));
        assert_eq!(bytes(" 4096 "), Ok(Bytes(4096)));
        assert_eq!(bytes("4096B"), Ok(Bytes(4096)));
        assert_eq!(bytes("10kB"), Ok(Bytes(10_000)));
        assert_eq!(bytes("10KB"), Ok(Bytes(10_000)));
        assert_eq!(bytes("1.5MB"), Ok(Bytes(1_500_000)));
        assert_eq!(bytes("2GB"), Ok(Bytes(2_000_000_000)));
        assert_eq!(bytes("1TiB"), Ok(Bytes::TIB));
        assert_eq!(bytes(".5KiB"), Ok(Bytes(512)));
        assert_eq!(bytes("0.1KiB"), Ok(Bytes(102)), "fractions round down");
    }

    #[test]
    fn refuses_bad_sizes_with_the_reason() {
        assert!(matches!(bytes(""), Err(SizeError::Empty)));
        assert!(matches!(bytes("-5GiB"), Err(SizeError::Negative { .. })));
        assert!(matches!(
            bytes("5 gigs"),
            Err(SizeError::UnknownUnit { unit, .. }) if unit == "gigs"
        ));
        assert!(matches!(bytes("5mb"), Err(SizeError::UnknownUnit { .. })));
        assert!(matches!(bytes("GiB"), Err(SizeError::NotANumber { .. })));
        assert!(matches!(
            bytes("1.2.3GiB"),
            Err(SizeError::NotANumber { .. })
        ));
        assert!(matches!(
            bytes("1.5B"),
            Err(SizeError::FractionalBytes { .. })
        ));
        assert!(matches!(
            bytes("0.5"),
            Err(SizeError::ShareNotAllowed { .. })
        ));
        assert!(matches!(bytes("16EiB"), Err(SizeError::UnknownUnit { .. })));
        assert!(matches!(
            bytes("20000000TiB"),
            Err(SizeError::TooLarge { .. })
        ));
        assert!(matches!(
            bytes("18446744073709551616"),
            Err(SizeError::TooLarge { .. })
        ));
        assert_eq!(bytes("18446744073709551615"), Ok(Bytes(u64::MAX)));
    }

    #[test]
    fn parses_shares_exactly() {
        let share = |t: &str| match t.parse::<Size>() {
            Ok(Size::Share(s)) => Some(s),
            _ => None,
        };
        assert_eq!(
            share("0.5").map(|s| s.of(Bytes::gib(10))),
            Some(Bytes::gib(5))
        );
        assert_eq!(share("1.0"), Some(Share::ALL));
        assert_eq!(share("25%").map(|s| s.of(Bytes(400))), Some(Bytes(100)));
        assert_eq!(share("12.5%").map(|s| s.of(Bytes(800))), Some(Bytes(100)));
        assert!(matches!(
            "1.5".parse::<Size>(),
            Err(SizeError::ShareOutOfRange { .. })
        ));
        assert!(matches!(
            "101%".parse::<Size>(),
            Err(SizeError::ShareOutOfRange { .. })
        ));
        assert_eq!(
            "7".parse::<Size>(),
            Ok(Size::Bytes(Bytes(7))),
            "integers are bytes"
        );
        assert!(Share::new(f64::NAN).is_err());
        assert!(Share::new(-0.1).is_err());
        assert_eq!(
            Share::new(1.0).map(|s| s.of(Bytes(u64::MAX))),
            Ok(Bytes(u64::MAX))
        );
    }

    #[test]
    fn displays_in_the_largest_unit() {
        assert_eq!(Bytes(100).to_string(), "100 B");
        assert_eq!(Bytes::KIB.to_string(), "1 KiB");
        assert_eq!(Bytes::mib(512).to_string(), "512 MiB");
        assert_eq!(Bytes(3 << 29).to_string(), "1.5 GiB");
        assert_eq!(Bytes(1_342_177_280).to_string(), "1.25 GiB");
        assert_eq!(Bytes::gib(70).to_string(), "70 GiB");
        assert_eq!(Bytes(u64::MAX).to_string(), "16777216 TiB");
    }

    #[test]
    fn display_round_trips_for_whole_and_half_units() {
        for b in [Bytes::gib(70), Bytes::mib(1536), Bytes::KIB, Bytes(999)] {
            let text = b.to_string().replace(' ', "");
            assert_eq!(bytes(&text), Ok(b), "{text}");
        }
    }
}
