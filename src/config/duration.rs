//! Go durations (`1s`, `500ms`, `1m30s`, `720h`), the format of every duration in Karpenter's API.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Parse a Go duration (`time.ParseDuration`): a sequence of decimal numbers, each with an optional
/// fraction and a unit (`ns`, `us`/`µs`, `ms`, `s`, `m`, `h`), such as `1s`, `500ms`, `1m30s`,
/// `1.5h`; a bare `0` is zero. Negative durations are rejected.
pub fn parse_go_duration(text: &str) -> Result<Duration, String> {
    let invalid = |why: &str| {
        format!("invalid duration {text:?}: {why} (expected e.g. 1s, 500ms, 1m30s, 1h)")
    };
    if text.starts_with('-') {
        return Err(invalid("must not be negative"));
    }
    let mut rest = text.strip_prefix('+').unwrap_or(text);
    if rest == "0" {
        return Ok(Duration::ZERO);
    }
    if rest.is_empty() {
        return Err(invalid("empty"));
    }
    let mut total: u128 = 0;
    while !rest.is_empty() {
        let (whole, after) = split_digits(rest);
        let (fraction, after) = match after.strip_prefix('.') {
            Some(after) => split_digits(after),
            None => ("", after),
        };
        if whole.is_empty() && fraction.is_empty() {
            return Err(invalid("expected a number"));
        }
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_len);
        let scale: u128 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60 * 1_000_000_000,
            "h" => 3_600 * 1_000_000_000,
            "" => return Err(invalid("missing unit")),
            _ => return Err(invalid(&format!("unknown unit {unit:?}"))),
        };
        let too_large = || invalid("too large");
        let whole: u128 = if whole.is_empty() {
            0
        } else {
            whole.parse().map_err(|_| too_large())?
        };
        // Nanoseconds are the resolution: fraction digits past the 20th cannot matter.
        let fraction = &fraction[..fraction.len().min(20)];
        let fraction_nanos = if fraction.is_empty() {
            0
        } else {
            fraction.parse::<u128>().map_err(|_| too_large())? * scale
                / 10u128.pow(fraction.len() as u32)
        };
        total = whole
            .checked_mul(scale)
            .and_then(|n| n.checked_add(fraction_nanos))
            .and_then(|n| n.checked_add(total))
            .filter(|n| *n <= i64::MAX as u128)
            .ok_or_else(too_large)?;
        rest = after;
    }
    Ok(Duration::from_nanos(total as u64))
}

fn split_digits(text: &str) -> (&str, &str) {
    text.split_at(
        text.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len()),
    )
}

/// Format a duration so that [`parse_go_duration`] reads it back: the largest unit that is exact.
pub fn format_go_duration(duration: Duration) -> String {
    let nanos = duration.as_nanos();
    let units: [(u128, &str); 6] = [
        (3_600_000_000_000, "h"),
        (60_000_000_000, "m"),
        (1_000_000_000, "s"),
        (1_000_000, "ms"),
        (1_000, "us"),
        (1, "ns"),
    ];
    if nanos == 0 {
        return "0s".to_owned();
    }
    let (scale, unit) = units
        .into_iter()
        .find(|(scale, _)| nanos.is_multiple_of(*scale))
        .unwrap_or((1, "ns"));
    format!("{}{unit}", nanos / scale)
}

/// A Go duration in a manifest, e.g. `terminationGracePeriod: 48h`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GoDuration(pub Duration);

impl<'de> Deserialize<'de> for GoDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        parse_go_duration(&text)
            .map(Self)
            .map_err(serde::de::Error::custom)
    }
}

impl Serialize for GoDuration {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&format_go_duration(self.0))
    }
}

impl fmt::Display for GoDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&format_go_duration(self.0))
    }
}

/// A Go duration or `Never`, as Karpenter's `expireAfter` and `consolidateAfter` take.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DurationOrNever {
    Never,
    After(Duration),
}

impl<'de> Deserialize<'de> for DurationOrNever {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        if text == "Never" {
            return Ok(Self::Never);
        }
        parse_go_duration(&text)
            .map(Self::After)
            .map_err(|e| serde::de::Error::custom(format!("{e}, or Never")))
    }
}

impl Serialize for DurationOrNever {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Never => serializer.serialize_str("Never"),
            Self::After(duration) => serializer.serialize_str(&format_go_duration(*duration)),
        }
    }
}

/// Whether `text` matches Karpenter's CRD pattern `^([0-9]+(s|m|h))+$` (with `units` for `smh`):
/// whole numbers only, no `ms`, no fractions; stricter than Go's own durations.
pub(crate) fn is_crd_duration(text: &str, units: &[char]) -> bool {
    let mut rest = text;
    while !rest.is_empty() {
        let (digits, after) = split_digits(rest);
        let mut chars = after.chars();
        match chars.next() {
            Some(unit) if !digits.is_empty() && units.contains(&unit) => rest = chars.as_str(),
            _ => return false,
        }
    }
    !text.is_empty()
}

/// A budget's `duration`: `Nh`, `Nm` or `NhMm`, optionally followed by `0s` (CRD pattern
/// `^((([0-9]+(h|m))|([0-9]+h[0-9]+m))(0s)?)$`).
pub(crate) fn is_budget_duration(text: &str) -> bool {
    let text = text.strip_suffix("0s").unwrap_or(text);
    let (hours, after) = split_digits(text);
    match after.strip_prefix('h') {
        Some("") => !hours.is_empty(),
        Some(minutes) => {
            let (digits, unit) = split_digits(minutes);
            !hours.is_empty() && !digits.is_empty() && unit == "m"
        }
        None => !hours.is_empty() && after == "m",
    }
}

/// Serde helpers for Karpenter's duration fields, each checking the field's CRD pattern.
pub(crate) mod crd {
    use serde::{Deserialize, Deserializer, de::Error};

    use super::{DurationOrNever, GoDuration, is_budget_duration, is_crd_duration};

    const SMH: &[char] = &['s', 'm', 'h'];

    fn text<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
        String::deserialize(deserializer)
    }

    /// `expireAfter`, `consolidateAfter`: `^(([0-9]+(s|m|h))+|Never)$`.
    pub(crate) fn duration_or_never<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<DurationOrNever>, D::Error> {
        let text = text(deserializer)?;
        if text == "Never" {
            return Ok(Some(DurationOrNever::Never));
        }
        if !is_crd_duration(&text, SMH) {
            return Err(D::Error::custom(format!(
                "invalid duration {text:?}: Karpenter takes whole numbers of s, m and h (e.g. 720h, 1h30m) or Never"
            )));
        }
        super::parse_go_duration(&text)
            .map(|d| Some(DurationOrNever::After(d)))
            .map_err(D::Error::custom)
    }

    /// `terminationGracePeriod`: `^([0-9]+(s|m|h))+$`.
    pub(crate) fn duration<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<GoDuration>, D::Error> {
        let text = text(deserializer)?;
        if !is_crd_duration(&text, SMH) {
            return Err(D::Error::custom(format!(
                "invalid duration {text:?}: Karpenter takes whole numbers of s, m and h (e.g. 48h, 1h30m)"
            )));
        }
        super::parse_go_duration(&text)
            .map(|d| Some(GoDuration(d)))
            .map_err(D::Error::custom)
    }

    /// A budget's `duration`: hours and minutes only.
    pub(crate) fn budget_duration<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<GoDuration>, D::Error> {
        let text = text(deserializer)?;
        if !is_budget_duration(&text) {
            return Err(D::Error::custom(format!(
                "invalid budget duration {text:?}: Karpenter takes hours and minutes only (e.g. 8h, 30m, 1h30m)"
            )));
        }
        super::parse_go_duration(&text)
            .map(|d| Some(GoDuration(d)))
            .map_err(D::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_go_durations() {
        let ms = Duration::from_millis;
        let cases = [
            ("0", Duration::ZERO),
            ("0s", Duration::ZERO),
            ("1s", ms(1_000)),
            ("+1s", ms(1_000)),
            ("500ms", ms(500)),
            ("10s", ms(10_000)),
            ("1m30s", ms(90_000)),
            ("1h", ms(3_600_000)),
            ("720h", ms(720 * 3_600_000)),
            ("1.5h", ms(5_400_000)),
            (".5s", ms(500)),
            ("1.s", ms(1_000)),
            ("2h45m", ms(2 * 3_600_000 + 45 * 60_000)),
            ("1h1m1s1ms1us1ns", Duration::from_nanos(3_661_001_001_001)),
            ("300us", Duration::from_micros(300)),
            ("300µs", Duration::from_micros(300)),
            ("1.000000001s", Duration::from_nanos(1_000_000_001)),
        ];
        for (text, expected) in cases {
            assert_eq!(parse_go_duration(text), Ok(expected), "{text}");
        }
    }

    #[test]
    fn rejects_what_go_rejects() {
        for text in [
            "",
            "1",
            "s",
            ".s",
            "1x",
            "1 s",
            "-1s",
            "1s-",
            "1d",
            "9999999999999999999h",
            "Never",
        ] {
            assert!(
                parse_go_duration(text).is_err(),
                "{text:?} should not parse"
            );
        }
        assert!(
            parse_go_duration("1d")
                .unwrap_err()
                .contains("unknown unit \"d\"")
        );
    }

    #[test]
    fn formats_durations_it_can_read_back() {
        for text in ["0s", "1s", "500ms", "90s", "1h", "720h", "5m", "3us", "7ns"] {
            let duration = parse_go_duration(text).unwrap();
            assert_eq!(
                parse_go_duration(&format_go_duration(duration)),
                Ok(duration),
                "{text}"
            );
        }
        assert_eq!(format_go_duration(Duration::from_secs(90)), "90s");
        assert_eq!(format_go_duration(Duration::from_secs(7200)), "2h");
    }

    #[test]
    fn reads_never() {
        let parsed: Vec<DurationOrNever> = serde_yaml::from_str("[Never, 720h, 0]").unwrap();
        assert_eq!(
            parsed,
            [
                DurationOrNever::Never,
                DurationOrNever::After(Duration::from_secs(720 * 3600)),
                DurationOrNever::After(Duration::ZERO)
            ]
        );
        let err = serde_yaml::from_str::<DurationOrNever>("never").unwrap_err();
        assert!(
            err.to_string().contains("invalid duration \"never\""),
            "{err}"
        );
    }

    #[test]
    fn karpenter_crd_duration_patterns() {
        const SMH: &[char] = &['s', 'm', 'h'];
        for text in ["720h", "1h30m", "30s", "0s", "1h1m1s", "10m0s"] {
            assert!(is_crd_duration(text, SMH), "{text}");
        }
        for text in ["", "1.5h", "500ms", "1d", "h", "Never", "-1h", "1h "] {
            assert!(!is_crd_duration(text, SMH), "{text:?}");
        }
        for text in ["8h", "30m", "1h30m", "10m0s", "1h0s", "1h30m0s"] {
            assert!(is_budget_duration(text), "{text}");
        }
        for text in [
            "", "30s", "2m30s", "1h30", "m", "h30m", "1.5h", "0s", "1m1h",
        ] {
            assert!(!is_budget_duration(text), "{text:?}");
        }
    }
}
