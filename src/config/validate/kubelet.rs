//! An EC2NodeClass's `spec.kubelet`, as Karpenter's CRD validates it: known resource names and
//! eviction signals, non-negative reservations, image GC thresholds in order, soft evictions paired
//! with their grace periods.

use super::super::nodeclass::KubeletConfiguration;
use super::super::yaml::FieldPath;
use super::Issues;
use super::syntax::quantity;

const RESERVED_RESOURCES: [&str; 4] = ["cpu", "memory", "ephemeral-storage", "pid"];
const EVICTION_SIGNALS: [&str; 6] = [
    "memory.available",
    "nodefs.available",
    "nodefs.inodesFree",
    "imagefs.available",
    "imagefs.inodesFree",
    "pid.available",
];

pub(super) fn kubelet(kubelet: &KubeletConfiguration, path: &FieldPath, issues: &mut Issues<'_>) {
    for (field, value) in [
        ("maxPods", kubelet.max_pods),
        ("podsPerCore", kubelet.pods_per_core),
    ] {
        if let Some(value) = value.filter(|v| *v < 0) {
            issues.add(
                path.key(field),
                format!("{field} must be at least 0, not {value}"),
            );
        }
    }
    for (field, reserved) in [
        ("systemReserved", &kubelet.system_reserved),
        ("kubeReserved", &kubelet.kube_reserved),
    ] {
        for (name, value) in reserved {
            let path = path.key(field).key(name);
            if !RESERVED_RESOURCES.contains(&name.as_str()) {
                issues.add(
                    path,
                    format!(
                        "{name:?} cannot be reserved; valid keys for {field} are {}",
                        RESERVED_RESOURCES.join(", ")
                    ),
                );
            } else if value.0.starts_with('-') {
                issues.add(
                    path,
                    format!("{field} value cannot be a negative resource quantity"),
                );
            } else {
                issues.check(path, quantity(value));
            }
        }
    }
    for (field, thresholds) in [
        ("evictionHard", &kubelet.eviction_hard),
        ("evictionSoft", &kubelet.eviction_soft),
    ] {
        signals(field, thresholds.keys(), path, issues);
        for (signal, threshold) in thresholds {
            if !is_threshold(threshold) {
                issues.add(
                    path.key(field).key(signal),
                    format!(
                        "invalid eviction threshold {threshold:?}: a percentage such as 10% or a quantity such as 100Mi"
                    ),
                );
            }
        }
    }
    signals(
        "evictionSoftGracePeriod",
        kubelet.eviction_soft_grace_period.keys(),
        path,
        issues,
    );
    image_gc(kubelet, path, issues);
    soft_pairs(kubelet, path, issues);
}

fn signals<'a>(
    field: &str,
    keys: impl Iterator<Item = &'a String>,
    path: &FieldPath,
    issues: &mut Issues<'_>,
) {
    for signal in keys.filter(|s| !EVICTION_SIGNALS.contains(&s.as_str())) {
        issues.add(
            path.key(field).key(signal),
            format!(
                "{signal:?} is not an eviction signal; valid keys for {field} are {}",
                EVICTION_SIGNALS.join(", ")
            ),
        );
    }
}

/// A percentage with up to two decimals (`10%`, `2.5%`, `100%`), or a quantity.
fn is_threshold(text: &str) -> bool {
    match text.strip_suffix('%') {
        Some(percent) => {
            let (whole, fraction) = percent.split_once('.').unwrap_or((percent, ""));
            let digits =
                |s: &str, max: usize| s.len() <= max && s.chars().all(|c| c.is_ascii_digit());
            let in_range = percent.parse::<f64>().is_ok_and(|p| p <= 100.0);
            !whole.is_empty()
                && digits(whole, 3)
                && digits(fraction, 2)
                && (percent.contains('.') != fraction.is_empty())
                && in_range
        }
        None => {
            text.is_empty()
                || quantity(&k8s_openapi::apimachinery::pkg::api::resource::Quantity(
                    text.to_owned(),
                ))
                .is_ok()
        }
    }
}

fn image_gc(kubelet: &KubeletConfiguration, path: &FieldPath, issues: &mut Issues<'_>) {
    let (high, low) = (
        kubelet.image_gc_high_threshold_percent,
        kubelet.image_gc_low_threshold_percent,
    );
    for (field, percent) in [
        ("imageGCHighThresholdPercent", high),
        ("imageGCLowThresholdPercent", low),
    ] {
        if let Some(percent) = percent.filter(|p| !(0..=100).contains(p)) {
            issues.add(
                path.key(field),
                format!("{field} must be between 0 and 100, not {percent}"),
            );
        }
    }
    if let (Some(high), Some(low)) = (high, low)
        && high <= low
    {
        issues.add(
            path.key("imageGCHighThresholdPercent"),
            format!(
                "imageGCHighThresholdPercent {high} must be greater than imageGCLowThresholdPercent {low}"
            ),
        );
    }
}

fn soft_pairs(kubelet: &KubeletConfiguration, path: &FieldPath, issues: &mut Issues<'_>) {
    for signal in kubelet
        .eviction_soft
        .keys()
        .filter(|s| !kubelet.eviction_soft_grace_period.contains_key(*s))
    {
        issues.add(
            path.key("evictionSoft").key(signal),
            format!("evictionSoft {signal} needs an evictionSoftGracePeriod entry"),
        );
    }
    for signal in kubelet
        .eviction_soft_grace_period
        .keys()
        .filter(|s| !kubelet.eviction_soft.contains_key(*s))
    {
        issues.add(
            path.key("evictionSoftGracePeriod").key(signal),
            format!("evictionSoftGracePeriod {signal} has no evictionSoft threshold"),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eviction_thresholds() {
        for text in ["10%", "5.5%", "100%", "0.25%", "100Mi", "1Gi", "500", ""] {
            assert!(is_threshold(text), "{text:?}");
        }
        for text in ["101%", "5.555%", "%", "ten%", "1GB", "5.%", "1000%"] {
            assert!(!is_threshold(text), "{text:?}");
        }
    }
}
