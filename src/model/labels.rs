//! Well-known node label keys (Karpenter's, its AWS provider's and Kubernetes' own), which of them
//! an instance type or an offering decides, and which keys a NodePool requirement may use in
//! Karpenter's restricted domains (as Karpenter v1.14's NodePool CRD allows them).

pub const NODEPOOL: &str = "karpenter.sh/nodepool";
/// Label on nodewright's nodes and tag on their instances: the NodeClaim they were launched for.
pub const NODECLAIM: &str = "nodewright.io/nodeclaim";
pub const CAPACITY_TYPE: &str = "karpenter.sh/capacity-type";
pub const ZONE: &str = "topology.kubernetes.io/zone";
pub const ZONE_BETA: &str = "failure-domain.beta.kubernetes.io/zone";
pub const REGION: &str = "topology.kubernetes.io/region";
pub const HOSTNAME: &str = "kubernetes.io/hostname";
pub const INSTANCE_TYPE: &str = "node.kubernetes.io/instance-type";
pub const INSTANCE_TYPE_BETA: &str = "beta.kubernetes.io/instance-type";
pub const ARCH: &str = "kubernetes.io/arch";
pub const ARCH_BETA: &str = "beta.kubernetes.io/arch";
pub const OS: &str = "kubernetes.io/os";
pub const OS_BETA: &str = "beta.kubernetes.io/os";

pub const INSTANCE_CATEGORY: &str = "karpenter.k8s.aws/instance-category";
pub const INSTANCE_FAMILY: &str = "karpenter.k8s.aws/instance-family";
pub const INSTANCE_GENERATION: &str = "karpenter.k8s.aws/instance-generation";
pub const INSTANCE_SIZE: &str = "karpenter.k8s.aws/instance-size";
pub const INSTANCE_CPU: &str = "karpenter.k8s.aws/instance-cpu";
pub const INSTANCE_CPU_MANUFACTURER: &str = "karpenter.k8s.aws/instance-cpu-manufacturer";
pub const INSTANCE_CPU_SUSTAINED_CLOCK_SPEED_MHZ: &str =
    "karpenter.k8s.aws/instance-cpu-sustained-clock-speed-mhz";
pub const INSTANCE_MEMORY: &str = "karpenter.k8s.aws/instance-memory";
pub const INSTANCE_EBS_BANDWIDTH: &str = "karpenter.k8s.aws/instance-ebs-bandwidth";
pub const INSTANCE_NETWORK_BANDWIDTH: &str = "karpenter.k8s.aws/instance-network-bandwidth";
pub const INSTANCE_HYPERVISOR: &str = "karpenter.k8s.aws/instance-hypervisor";
pub const INSTANCE_ENCRYPTION_IN_TRANSIT_SUPPORTED: &str =
    "karpenter.k8s.aws/instance-encryption-in-transit-supported";
pub const INSTANCE_GPU_NAME: &str = "karpenter.k8s.aws/instance-gpu-name";
pub const INSTANCE_GPU_MANUFACTURER: &str = "karpenter.k8s.aws/instance-gpu-manufacturer";
pub const INSTANCE_GPU_COUNT: &str = "karpenter.k8s.aws/instance-gpu-count";
pub const INSTANCE_GPU_MEMORY: &str = "karpenter.k8s.aws/instance-gpu-memory";
pub const INSTANCE_ACCELERATOR_NAME: &str = "karpenter.k8s.aws/instance-accelerator-name";
pub const INSTANCE_ACCELERATOR_MANUFACTURER: &str =
    "karpenter.k8s.aws/instance-accelerator-manufacturer";
pub const INSTANCE_ACCELERATOR_COUNT: &str = "karpenter.k8s.aws/instance-accelerator-count";
pub const INSTANCE_LOCAL_NVME: &str = "karpenter.k8s.aws/instance-local-nvme";
pub const INSTANCE_CAPABILITY_FLEX: &str = "karpenter.k8s.aws/instance-capability-flex";
pub const INSTANCE_TENANCY: &str = "karpenter.k8s.aws/instance-tenancy";
pub const CAPACITY_RESERVATION_ID: &str = "karpenter.k8s.aws/capacity-reservation-id";
pub const CAPACITY_RESERVATION_TYPE: &str = "karpenter.k8s.aws/capacity-reservation-type";
pub const CAPACITY_RESERVATION_INTERRUPTIBLE: &str =
    "karpenter.k8s.aws/capacity-reservation-interruptible";
pub const PLACEMENT_GROUP_ID: &str = "karpenter.k8s.aws/placement-group-id";
pub const PLACEMENT_GROUP_PARTITION: &str = "karpenter.k8s.aws/placement-group-partition";
/// The node's EC2NodeClass (its NodePool's `nodeClassRef.name`). Karpenter sets it on nodes; its
/// CRD lets a NodePool require it, but its runtime validation refuses it (it is not well known).
pub const EC2_NODE_CLASS: &str = "karpenter.k8s.aws/ec2nodeclass";

/// Karpenter's own domain; a NodePool requirement may use only [`CAPACITY_TYPE`] in it.
pub const KARPENTER_DOMAIN: &str = "karpenter.sh";
/// Karpenter's AWS provider's domain; a NodePool requirement may use only [`KARPENTER_AWS_KEYS`].
pub const KARPENTER_AWS_DOMAIN: &str = "karpenter.k8s.aws";

/// The `karpenter.k8s.aws/*` keys a NodePool requirement may use (Karpenter v1.14.1's well-known
/// labels, which both its NodePool CRD and its runtime validation accept): what the AWS provider
/// publishes on instance types, plus capacity reservations and placement groups.
pub const KARPENTER_AWS_KEYS: [&str; 27] = [
    INSTANCE_CATEGORY,
    INSTANCE_FAMILY,
    INSTANCE_GENERATION,
    INSTANCE_SIZE,
    INSTANCE_CPU,
    INSTANCE_CPU_MANUFACTURER,
    INSTANCE_CPU_SUSTAINED_CLOCK_SPEED_MHZ,
    INSTANCE_MEMORY,
    INSTANCE_EBS_BANDWIDTH,
    INSTANCE_NETWORK_BANDWIDTH,
    INSTANCE_HYPERVISOR,
    INSTANCE_ENCRYPTION_IN_TRANSIT_SUPPORTED,
    INSTANCE_GPU_NAME,
    INSTANCE_GPU_MANUFACTURER,
    INSTANCE_GPU_COUNT,
    INSTANCE_GPU_MEMORY,
    INSTANCE_ACCELERATOR_NAME,
    INSTANCE_ACCELERATOR_MANUFACTURER,
    INSTANCE_ACCELERATOR_COUNT,
    INSTANCE_LOCAL_NVME,
    INSTANCE_CAPABILITY_FLEX,
    INSTANCE_TENANCY,
    CAPACITY_RESERVATION_ID,
    CAPACITY_RESERVATION_TYPE,
    CAPACITY_RESERVATION_INTERRUPTIBLE,
    PLACEMENT_GROUP_ID,
    PLACEMENT_GROUP_PARTITION,
];

/// Keys whose value comes from the instance type (not the pool's template or the offering).
/// Capacity reservations and placement groups are among them: nodewright launches neither, so no
/// type carries those labels.
pub fn is_instance_label(key: &str) -> bool {
    matches!(
        key,
        INSTANCE_TYPE
            | INSTANCE_TYPE_BETA
            | ARCH
            | ARCH_BETA
            | OS
            | OS_BETA
            | INSTANCE_CATEGORY
            | INSTANCE_FAMILY
            | INSTANCE_GENERATION
            | INSTANCE_SIZE
            | INSTANCE_CPU
            | INSTANCE_CPU_MANUFACTURER
            | INSTANCE_CPU_SUSTAINED_CLOCK_SPEED_MHZ
            | INSTANCE_MEMORY
            | INSTANCE_EBS_BANDWIDTH
            | INSTANCE_NETWORK_BANDWIDTH
            | INSTANCE_HYPERVISOR
            | INSTANCE_ENCRYPTION_IN_TRANSIT_SUPPORTED
            | INSTANCE_GPU_NAME
            | INSTANCE_GPU_MANUFACTURER
            | INSTANCE_GPU_COUNT
            | INSTANCE_GPU_MEMORY
            | INSTANCE_ACCELERATOR_NAME
            | INSTANCE_ACCELERATOR_MANUFACTURER
            | INSTANCE_ACCELERATOR_COUNT
            | INSTANCE_LOCAL_NVME
            | INSTANCE_CAPABILITY_FLEX
            | INSTANCE_TENANCY
            | CAPACITY_RESERVATION_ID
            | CAPACITY_RESERVATION_TYPE
            | CAPACITY_RESERVATION_INTERRUPTIBLE
            | PLACEMENT_GROUP_ID
            | PLACEMENT_GROUP_PARTITION
    )
}

/// Keys whose value comes from the offering.
pub fn is_offering_label(key: &str) -> bool {
    matches!(key, ZONE | ZONE_BETA | CAPACITY_TYPE)
}

/// Why Karpenter refuses `key` in a NodePool requirement or template label, or `None` if it
/// allows it: `kubernetes.io/hostname`, `karpenter.sh/*` other than the capacity type, and
/// `karpenter.k8s.aws/*` other than [`KARPENTER_AWS_KEYS`] (so [`EC2_NODE_CLASS`] too, as
/// Karpenter's runtime validation has it; a domain counts when it ends with the restricted one,
/// as the CRD's rule has it).
pub fn restricted_requirement_key(key: &str) -> Option<String> {
    let domain = key.split('/').next().unwrap_or(key);
    if key == HOSTNAME {
        return Some(format!("label {HOSTNAME:?} is restricted"));
    }
    if key == NODEPOOL {
        return Some(format!(
            "label {NODEPOOL:?} is restricted (a node's pool is set by nodewright)"
        ));
    }
    if domain.ends_with(KARPENTER_DOMAIN) && key != CAPACITY_TYPE {
        return Some(format!(
            "label domain {KARPENTER_DOMAIN:?} is restricted: {key:?} is not a label Karpenter \
             lets a NodePool use (the one it allows is {CAPACITY_TYPE})"
        ));
    }
    if domain.ends_with(KARPENTER_AWS_DOMAIN) && !KARPENTER_AWS_KEYS.contains(&key) {
        let known: Vec<&str> = KARPENTER_AWS_KEYS
            .iter()
            .map(|k| &k[KARPENTER_AWS_DOMAIN.len() + 1..])
            .collect();
        return Some(format!(
            "label domain {KARPENTER_AWS_DOMAIN:?} is restricted: {key:?} is not a label \
             Karpenter publishes (known: {KARPENTER_AWS_DOMAIN}/ followed by {})",
            known.join(", ")
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restricted_keys_are_the_ones_karpenters_crd_refuses() {
        let allowed = [
            "karpenter.sh/capacity-type",
            "karpenter.k8s.aws/instance-family",
            "karpenter.k8s.aws/instance-network-bandwidth",
            "karpenter.k8s.aws/instance-capability-flex",
            "karpenter.k8s.aws/placement-group-partition",
            "topology.kubernetes.io/zone",
            "node.kubernetes.io/instance-type",
            "example.com/team",
            "team",
            "karpenter.shop/x",
        ];
        for key in allowed {
            assert_eq!(restricted_requirement_key(key), None, "{key}");
        }
        let refused = [
            ("kubernetes.io/hostname", "label \"kubernetes.io/hostname\""),
            ("karpenter.sh/nodepool", "label \"karpenter.sh/nodepool\""),
            ("karpenter.sh/initialized", "domain \"karpenter.sh\""),
            ("sub.karpenter.sh/x", "domain \"karpenter.sh\""),
            (
                "karpenter.k8s.aws/instance-gpus",
                "domain \"karpenter.k8s.aws\"",
            ),
            (
                "karpenter.k8s.aws/nitro-sandbox",
                "domain \"karpenter.k8s.aws\"",
            ),
            (
                "x.karpenter.k8s.aws/instance-cpu",
                "domain \"karpenter.k8s.aws\"",
            ),
        ];
        for (key, says) in refused {
            let message = restricted_requirement_key(key).unwrap_or_default();
            assert!(message.contains(says), "{key}: {message}");
        }
        let message = restricted_requirement_key("karpenter.k8s.aws/instance-gpus").unwrap();
        assert!(message.contains("instance-gpu-count"), "{message}");
    }

    #[test]
    fn every_aws_key_a_pool_may_require_is_decided_by_the_instance_type() {
        for key in KARPENTER_AWS_KEYS {
            assert!(is_instance_label(key), "{key}");
        }
        assert!(!is_instance_label(EC2_NODE_CLASS));
        assert!(is_offering_label(ZONE) && !is_instance_label(ZONE));
    }
}
