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
}
