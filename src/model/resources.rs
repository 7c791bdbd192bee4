//! Resource quantities and the dense resource vector the planner packs with.
//!
//! Kubernetes quantities (`500m`, `1.5`, `4Gi`, `1e3`) are parsed exactly into integers: cpu in
//! millicores, everything else in whole units (bytes for memory and storage, counts for pods and
//! extended resources), rounding fractions up as the scheduler does.

use std::fmt;
use std::ops::{Add, AddAssign, Sub, SubAssign};

use serde::Serialize;

/// The resources a node has and a pod requests, in fixed slots so the packer works on arrays.
/// Extended resources other than the device kinds below cannot be provided by new nodes; pods that
/// request them are reported unschedulable with the resource's name.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct Resources(pub [i64; DIMS]);

/// Number of resource dimensions.
pub const DIMS: usize = 9;
/// Slot of `cpu`, in millicores.
pub const CPU: usize = 0;
/// Slot of `memory`, in bytes.
pub const MEMORY: usize = 1;
/// Slot of `ephemeral-storage`, in bytes.
pub const EPHEMERAL: usize = 2;
/// Slot of pod slots (`pods`).
pub const PODS: usize = 3;
/// Slot of `nvidia.com/gpu`.
pub const NVIDIA_GPU: usize = 4;
/// Slot of `amd.com/gpu`.
pub const AMD_GPU: usize = 5;
/// Slot of `aws.amazon.com/neuron` (Inferentia and Trainium devices).
pub const NEURON: usize = 6;
/// Slot of `aws.amazon.com/neuroncore` (the cores of those devices).
pub const NEURONCORE: usize = 7;
/// Slot of `vpc.amazonaws.com/efa` (Elastic Fabric Adapter interfaces).
pub const EFA: usize = 8;

/// Resource names in slot order, as Kubernetes spells them.
pub const NAMES: [&str; DIMS] = [
    "cpu",
    "memory",
    "ephemeral-storage",
    "pods",
    "nvidia.com/gpu",
    "amd.com/gpu",
    "aws.amazon.com/neuron",
    "aws.amazon.com/neuroncore",
    "vpc.amazonaws.com/efa",
];

/// The slot of a resource name (`cpu`, `nvidia.com/gpu`, `vpc.amazonaws.com/efa`, ...), `None`
/// for resources nodewright does not track (hugepages, other extended resources).
pub fn slot_of(name: &str) -> Option<usize> {
    NAMES.iter().position(|n| *n == name)
}

/// A quantity in `slot`'s units: millicores for cpu, whole units (bytes, counts) otherwise.
pub fn parse_slot_quantity(slot: usize, quantity: &str) -> Option<i64> {
    if slot == CPU {
        parse_quantity_millis(quantity)
    } else {
        parse_quantity(quantity)
    }
}

impl Resources {
    pub const ZERO: Resources = Resources([0; DIMS]);

    pub fn cpu_millis(&self) -> i64 {
        self.0[CPU]
    }

    pub fn memory_bytes(&self) -> i64 {
        self.0[MEMORY]
    }

    pub fn get(&self, slot: usize) -> i64 {
        self.0[slot]
    }

    /// Every slot of `self` is at most the same slot of `capacity`.
    #[inline]
    pub fn fits_in(&self, capacity: &Resources) -> bool {
        self.0.iter().zip(capacity.0.iter()).all(|(a, b)| a <= b)
    }

    /// Slot-wise maximum.
    pub fn slot_max(&self, other: &Resources) -> Resources {
        let mut out = *self;
        for (a, b) in out.0.iter_mut().zip(other.0.iter()) {
            *a = (*a).max(*b);
        }
        out
    }

    /// Slot-wise subtraction floored at zero.
    pub fn saturating_sub(&self, other: &Resources) -> Resources {
        let mut out = *self;
        for (a, b) in out.0.iter_mut().zip(other.0.iter()) {
            *a = (*a - *b).max(0);
        }
        out
    }

    /// The first slot in which `self` exceeds `capacity`, if any.
    pub fn first_excess(&self, capacity: &Resources) -> Option<usize> {
        (0..DIMS).find(|&i| self.0[i] > capacity.0[i])
    }

    pub fn is_zero(&self) -> bool {
        self.0.iter().all(|v| *v == 0)
    }

    /// `requests` as Kubernetes writes them (`cpu`, `memory`, ...), skipping zero slots.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        for (slot, name) in NAMES.iter().enumerate() {
            if self.0[slot] != 0 {
                parts.push(format!("{name} {}", format_slot(slot, self.0[slot])));
            }
        }
        if parts.is_empty() {
            "nothing".to_owned()
        } else {
            parts.join(", ")
        }
    }

    /// Adds one named quantity. Returns the name back if it has no slot.
    pub fn add_named(&mut self, name: &str, quantity: &str) -> Result<(), ResourceError> {
        let Some(slot) = slot_of(name) else {
            return Err(ResourceError::Unsupported(name.to_owned()));
        };
        let value = parse_slot_quantity(slot, quantity).ok_or_else(|| ResourceError::Invalid {
            name: name.to_owned(),
            quantity: quantity.to_owned(),
        })?;
        self.0[slot] = self.0[slot].saturating_add(value);
        Ok(())
    }
}

/// Why a named resource list could not be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ResourceError {
    #[error("extended resource {0:?} cannot be provided by the instances nodewright launches")]
    Unsupported(String),
    #[error("invalid quantity {quantity:?} for {name}")]
    Invalid { name: String, quantity: String },
}

/// Formats one slot for people: cpu as cores or millicores, bytes in binary units.
pub fn format_slot(slot: usize, value: i64) -> String {
    match slot {
        CPU if value % 1000 == 0 => format!("{}", value / 1000),
        CPU => format!("{value}m"),
        MEMORY | EPHEMERAL => format_bytes(value),
        _ => value.to_string(),
    }
}

fn format_bytes(value: i64) -> String {
    const UNITS: [(&str, i64); 4] = [
        ("Ti", 1 << 40),
        ("Gi", 1 << 30),
        ("Mi", 1 << 20),
        ("Ki", 1 << 10),
    ];
    for (suffix, size) in UNITS {
        if value >= size && value % size == 0 {
            return format!("{}{suffix}", value / size);
        }
    }
    for (suffix, size) in UNITS {
        if value >= size {
            return format!("{:.1}{suffix}", value as f64 / size as f64);
        }
    }
    value.to_string()
}

impl Add for Resources {
    type Output = Resources;
    #[inline]
    fn add(mut self, rhs: Resources) -> Resources {
        self += rhs;
        self
    }
}

impl AddAssign for Resources {
    #[inline]
    fn add_assign(&mut self, rhs: Resources) {
        for (a, b) in self.0.iter_mut().zip(rhs.0.iter()) {
            *a += *b;
        }
    }
}

impl Sub for Resources {
    type Output = Resources;
    #[inline]
    fn sub(mut self, rhs: Resources) -> Resources {
        self -= rhs;
        self
    }
}

impl SubAssign for Resources {
    #[inline]
    fn sub_assign(&mut self, rhs: Resources) {
        for (a, b) in self.0.iter_mut().zip(rhs.0.iter()) {
            *a -= *b;
        }
    }
}

impl fmt::Display for Resources {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe())
    }
}

/// A quantity in whole units, fractions rounded up (`1.5` → 2, `1Ki` → 1024, `100m` → 1).
pub fn parse_quantity(text: &str) -> Option<i64> {
    parse_scaled(text, 0)
}

/// A quantity in thousandths (`500m` → 500, `1.5` → 1500, `2` → 2000), rounded up.
pub fn parse_quantity_millis(text: &str) -> Option<i64> {
    parse_scaled(text, 3)
}

/// Parses `text` into an integer number of 10^-`decimals` units, rounding up.
fn parse_scaled(text: &str, decimals: i32) -> Option<i64> {
    let text = text.trim();
    let (negative, unsigned) = match text.as_bytes().first()? {
        b'-' => (true, &text[1..]),
        b'+' => (false, &text[1..]),
        _ => (false, text),
    };
    let number_len = unsigned
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(unsigned.len());
    let (number, suffix) = unsigned.split_at(number_len);
    let (int_part, frac_part) = number.split_once('.').unwrap_or((number, ""));
    if int_part.is_empty() && frac_part.is_empty() {
        return None;
    }
    if frac_part.contains('.') {
        return None;
    }
    // mantissa = digits as an integer, scaled by 10^-frac_len
    let digits: String = format!("{int_part}{frac_part}");
    let mut mantissa: i128 = if digits.is_empty() {
        0
    } else {
        digits.parse::<i128>().ok()?
    };
    let mut exp10: i32 = -(frac_part.len() as i32) + decimals;
    let mut binary: u32 = 0;
    match suffix {
        "" => {}
        "n" => exp10 -= 9,
        "u" => exp10 -= 6,
        "m" => exp10 -= 3,
        "k" => exp10 += 3,
        "M" => exp10 += 6,
        "G" => exp10 += 9,
        "T" => exp10 += 12,
        "P" => exp10 += 15,
        "E" => exp10 += 18,
        "Ki" => binary = 10,
        "Mi" => binary = 20,
        "Gi" => binary = 30,
        "Ti" => binary = 40,
        "Pi" => binary = 50,
        "Ei" => binary = 60,
        other => {
            let exponent = other.strip_prefix(['e', 'E'])?;
            let parsed: i32 = exponent.parse().ok()?;
            if !(-30..=30).contains(&parsed) {
                return None;
            }
            exp10 += parsed;
        }
    }
    mantissa = mantissa.checked_mul(1i128 << binary)?;
    let value = if exp10 >= 0 {
        mantissa.checked_mul(10i128.checked_pow(exp10 as u32)?)?
    } else {
        let divisor = 10i128.checked_pow((-exp10) as u32)?;
        (mantissa + divisor - 1) / divisor
    };
    let value = if negative { -value } else { value };
    i64::try_from(value).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_parse_exactly() {
        let cases = [
            ("1", Some(1), Some(1000)),
            ("1.5", Some(2), Some(1500)),
            ("500m", Some(1), Some(500)),
            ("100m", Some(1), Some(100)),
            ("0.1", Some(1), Some(100)),
            ("1Ki", Some(1024), Some(1_024_000)),
            ("256Mi", Some(256 << 20), Some((256i64 << 20) * 1000)),
            ("1.5Gi", Some(3 << 29), Some((3i64 << 29) * 1000)),
            ("1e3", Some(1000), Some(1_000_000)),
            ("1E3", Some(1000), Some(1_000_000)),
            ("2k", Some(2000), Some(2_000_000)),
            ("1G", Some(1_000_000_000), Some(1_000_000_000_000)),
            ("10n", Some(1), Some(1)),
            ("0", Some(0), Some(0)),
            ("+3", Some(3), Some(3000)),
            ("", None, None),
            ("abc", None, None),
            ("1Qi", None, None),
            ("1..2", None, None),
            ("1e99", None, None),
        ];
        for (text, whole, millis) in cases {
            assert_eq!(parse_quantity(text), whole, "{text}");
            assert_eq!(parse_quantity_millis(text), millis, "{text} (millis)");
        }
    }

    #[test]
    fn named_resources_fill_slots_and_refuse_unknown_ones() {
        let mut r = Resources::ZERO;
        r.add_named("cpu", "250m").unwrap();
        r.add_named("memory", "1Gi").unwrap();
        r.add_named("nvidia.com/gpu", "1").unwrap();
        r.add_named("aws.amazon.com/neuron", "1").unwrap();
        r.add_named("aws.amazon.com/neuroncore", "2").unwrap();
        r.add_named("vpc.amazonaws.com/efa", "4").unwrap();
        r.add_named("amd.com/gpu", "0").unwrap();
        assert_eq!(r.0, [250, 1 << 30, 0, 0, 1, 0, 1, 2, 4]);
        assert_eq!(
            r.add_named("example.com/fpga", "1"),
            Err(ResourceError::Unsupported("example.com/fpga".into()))
        );
        assert!(r.add_named("cpu", "x").is_err());
        assert_eq!(
            r.describe(),
            "cpu 250m, memory 1Gi, nvidia.com/gpu 1, aws.amazon.com/neuron 1, \
             aws.amazon.com/neuroncore 2, vpc.amazonaws.com/efa 4"
        );
        assert!(
            r.add_named("habana.ai/gaudi", "1").is_err(),
            "no instance nodewright launches advertises it"
        );
    }

    #[test]
    fn resource_names_map_to_slots() {
        let cases = [
            ("cpu", Some(CPU)),
            ("memory", Some(MEMORY)),
            ("ephemeral-storage", Some(EPHEMERAL)),
            ("pods", Some(PODS)),
            ("nvidia.com/gpu", Some(NVIDIA_GPU)),
            ("amd.com/gpu", Some(AMD_GPU)),
            ("aws.amazon.com/neuron", Some(NEURON)),
            ("aws.amazon.com/neuroncore", Some(NEURONCORE)),
            ("vpc.amazonaws.com/efa", Some(EFA)),
            ("hugepages-2Mi", None),
            ("example.com/fpga", None),
        ];
        for (name, slot) in cases {
            assert_eq!(slot_of(name), slot, "{name}");
        }
        assert_eq!(parse_slot_quantity(CPU, "1500m"), Some(1500));
        assert_eq!(parse_slot_quantity(MEMORY, "1Gi"), Some(1 << 30));
        assert_eq!(parse_slot_quantity(EFA, "8"), Some(8));
        assert_eq!(parse_slot_quantity(NEURONCORE, "x"), None);
    }
}
