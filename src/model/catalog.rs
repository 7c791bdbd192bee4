//! The instance catalog: EC2 instance types, where and how they are offered, at what price, and
//! how much of each a pod can use once the kubelet and the system have taken their share.
//!
//! # Allocatable
//! What the kubelet on an EKS node advertises, computed as Karpenter's AWS provider does:
//!
//! ```text
//! capacity.cpu     = vCPUs
//! capacity.memory  = memory_mib × (1 − 7.5 %)          (hypervisor/firmware overhead, Karpenter's
//!                                                        VM_MEMORY_OVERHEAD_PERCENT default)
//! capacity.pods    = kubelet.maxPods, else min(podsPerCore × vCPUs, ENI max pods), else ENI max pods
//!                    ENI max pods = ENIs × (IPv4 addresses per ENI − 1) + 2   (EKS VPC CNI)
//! capacity.ephemeral-storage = root volume (EC2NodeClass blockDeviceMappings, else 20Gi)
//!
//! kube-reserved.cpu    = 6 % of the 1st core + 1 % of the 2nd + 0.5 % of the 3rd and 4th
//!                        + 0.25 % of every further core                (EKS AMI formula)
//! kube-reserved.memory = 11Mi × capacity.pods + 255Mi                  (EKS AMI formula)
//! kube-reserved.ephemeral-storage = 1Gi
//! eviction-hard        = memory.available 100Mi, nodefs.available 10 % of the root volume
//!
//! allocatable = capacity − kube-reserved − system-reserved − eviction-hard
//! ```
//! `kubeReserved`, `systemReserved` and `evictionHard` set in the EC2NodeClass's `kubelet` replace
//! the defaults of the resources they name.

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;

use super::resources::{self, CPU, EPHEMERAL, MEMORY, PODS, Resources};

/// `karpenter.sh/capacity-type` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum CapacityType {
    Spot,
    OnDemand,
}

impl CapacityType {
    pub const ALL: [CapacityType; 2] = [CapacityType::Spot, CapacityType::OnDemand];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Spot => "spot",
            Self::OnDemand => "on-demand",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "spot" => Some(Self::Spot),
            "on-demand" => Some(Self::OnDemand),
            _ => None,
        }
    }
}

impl fmt::Display for CapacityType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// CPU architecture as `kubernetes.io/arch` spells it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    Amd64,
    Arm64,
}

impl Arch {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Amd64 => "amd64",
            Self::Arm64 => "arm64",
        }
    }

    /// From EC2's `ProcessorInfo.SupportedArchitectures` (`x86_64`, `arm64`, `i386|x86_64`).
    /// Mac instances (`x86_64_mac`, `arm64_mac`) cannot run EKS nodes and give `None`.
    pub fn from_ec2<'a>(architectures: impl IntoIterator<Item = &'a str>) -> Option<Self> {
        let mut found = None;
        for arch in architectures {
            match arch {
                "x86_64" => found = Some(Self::Amd64),
                "arm64" => found = found.or(Some(Self::Arm64)),
                _ => {}
            }
        }
        found
    }
}

/// One place and way an instance type can be bought, and its price.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Offering {
    pub zone: String,
    pub capacity_type: CapacityType,
    /// USD per hour.
    pub price: f64,
    /// The price was estimated (no published or reported price for this offering).
    pub price_estimated: bool,
    /// False while the offering is known to lack capacity (e.g. after an InsufficientInstanceCapacity).
    pub available: bool,
}

/// The facts of one EC2 instance type that scheduling needs.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct InstanceType {
    pub name: String,
    pub family: String,
    pub category: String,
    pub generation: u32,
    pub size: String,
    pub vcpus: u32,
    pub memory_mib: u64,
    pub arch: Arch,
    /// GPUs and the resource they are advertised as (`nvidia.com/gpu`, `amd.com/gpu`).
    pub gpus: u32,
    pub gpu_slot: Option<usize>,
    pub gpu_memory_mib: u64,
    /// EKS VPC CNI max pods: ENIs × (IPv4 per ENI − 1) + 2.
    pub max_pods_eni: u32,
    pub hypervisor: String,
    pub bare_metal: bool,
    pub current_generation: bool,
    pub local_storage_gb: u64,
    pub offerings: Vec<Offering>,
}

/// Kubelet settings that change allocatable (the EC2NodeClass's `kubelet` block, parsed).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct KubeletSettings {
    pub max_pods: Option<u32>,
    pub pods_per_core: Option<u32>,
    /// Replacements of the default kube-reserved, by slot.
    pub kube_reserved: BTreeMap<usize, i64>,
    pub system_reserved: BTreeMap<usize, i64>,
    /// `memory.available` hard eviction threshold in bytes, replacing 100Mi.
    pub eviction_memory: Option<i64>,
    /// Root volume size in bytes, replacing 20Gi.
    pub root_volume_bytes: Option<i64>,
}

const MIB: i64 = 1 << 20;
const GIB: i64 = 1 << 30;
/// Karpenter's default `VM_MEMORY_OVERHEAD_PERCENT`.
pub const VM_MEMORY_OVERHEAD: f64 = 0.075;
/// Karpenter's default root volume for AL2023.
pub const DEFAULT_ROOT_VOLUME: i64 = 20 * GIB;

impl InstanceType {
    /// Parses `family.size` into family, category, generation, size.
    pub fn split_name(name: &str) -> (String, String, u32, String) {
        let (family, size) = name.split_once('.').unwrap_or((name, ""));
        let category: String = family
            .chars()
            .take_while(|c| c.is_ascii_lowercase())
            .collect();
        let rest = &family[category.len()..];
        let generation = rest
            .trim_start_matches(|c: char| !c.is_ascii_digit())
            .chars()
            .take_while(char::is_ascii_digit)
            .collect::<String>()
            .parse()
            .unwrap_or(0);
        (family.to_owned(), category, generation, size.to_owned())
    }

    /// Pod slots of a node of this type.
    pub fn pods(&self, kubelet: &KubeletSettings) -> u32 {
        if let Some(max) = kubelet.max_pods {
            return max;
        }
        match kubelet.pods_per_core {
            Some(per_core) if per_core > 0 => (per_core * self.vcpus).min(self.max_pods_eni),
            _ => self.max_pods_eni,
        }
    }

    /// What the node reports as capacity.
    pub fn capacity(&self, kubelet: &KubeletSettings) -> Resources {
        let mut r = Resources::ZERO;
        r.0[CPU] = i64::from(self.vcpus) * 1000;
        r.0[MEMORY] = ((self.memory_mib as f64) * (1.0 - VM_MEMORY_OVERHEAD)) as i64 * MIB;
        r.0[EPHEMERAL] = kubelet.root_volume_bytes.unwrap_or(DEFAULT_ROOT_VOLUME);
        r.0[PODS] = i64::from(self.pods(kubelet));
        if let Some(slot) = self.gpu_slot {
            r.0[slot] = i64::from(self.gpus);
        }
        r
    }

    /// Kube-reserved plus system-reserved plus hard eviction thresholds (see the module docs).
    pub fn overhead(&self, kubelet: &KubeletSettings) -> Resources {
        let capacity = self.capacity(kubelet);
        let mut kube = Resources::ZERO;
        kube.0[CPU] = eks_cpu_reserved_millis(self.vcpus);
        kube.0[MEMORY] = 11 * MIB * capacity.0[PODS] + 255 * MIB;
        kube.0[EPHEMERAL] = GIB;
        for (slot, value) in &kubelet.kube_reserved {
            kube.0[*slot] = *value;
        }
        let mut system = Resources::ZERO;
        for (slot, value) in &kubelet.system_reserved {
            system.0[*slot] = *value;
        }
        let mut eviction = Resources::ZERO;
        eviction.0[MEMORY] = kubelet.eviction_memory.unwrap_or(100 * MIB);
        eviction.0[EPHEMERAL] = capacity.0[EPHEMERAL] / 10;
        kube + system + eviction
    }

    /// What pods can request on a node of this type: capacity minus overhead.
    pub fn allocatable(&self, kubelet: &KubeletSettings) -> Resources {
        self.capacity(kubelet)
            .saturating_sub(&self.overhead(kubelet))
    }

    /// The value this type carries for a well-known node label, `None` if it has no such label
    /// (or if the label depends on the offering: zone and capacity type).
    pub fn label(&self, key: &str) -> Option<String> {
        Some(match key {
            labels::INSTANCE_TYPE | labels::INSTANCE_TYPE_BETA => self.name.clone(),
            labels::ARCH | labels::ARCH_BETA => self.arch.as_str().to_owned(),
            labels::OS | labels::OS_BETA => "linux".to_owned(),
            labels::INSTANCE_FAMILY => self.family.clone(),
            labels::INSTANCE_CATEGORY => self.category.clone(),
            labels::INSTANCE_GENERATION => self.generation.to_string(),
            labels::INSTANCE_SIZE => self.size.clone(),
            labels::INSTANCE_CPU => self.vcpus.to_string(),
            labels::INSTANCE_MEMORY => self.memory_mib.to_string(),
            labels::INSTANCE_HYPERVISOR => self.hypervisor.clone(),
            labels::INSTANCE_GPU_COUNT if self.gpus > 0 => self.gpus.to_string(),
            labels::INSTANCE_GPU_MEMORY if self.gpus > 0 => self.gpu_memory_mib.to_string(),
            labels::INSTANCE_LOCAL_NVME if self.local_storage_gb > 0 => {
                self.local_storage_gb.to_string()
            }
            _ => return None,
        })
    }

    /// The cheapest available offering accepted by `accept`.
    pub fn cheapest_offering(
        &self,
        mut accept: impl FnMut(&Offering) -> bool,
    ) -> Option<&Offering> {
        self.offerings
            .iter()
            .filter(|o| o.available && accept(o))
            .min_by(|a, b| {
                a.price
                    .total_cmp(&b.price)
                    .then_with(|| a.capacity_type.cmp(&b.capacity_type))
                    .then_with(|| a.zone.cmp(&b.zone))
            })
    }
}

/// EKS AMI kube-reserved CPU in millicores.
pub fn eks_cpu_reserved_millis(vcpus: u32) -> i64 {
    // (cores from, cores to, thousandths of a core reserved per core in the range × 10)
    let mut reserved_tenths = 0i64; // tenths of a millicore
    let cores = i64::from(vcpus);
    let bands: [(i64, i64, i64); 4] = [(0, 1, 600), (1, 2, 100), (2, 4, 50), (4, i64::MAX, 25)];
    for (from, to, tenths_per_core) in bands {
        if cores > from {
            reserved_tenths += (cores.min(to) - from) * tenths_per_core;
        }
    }
    (reserved_tenths + 9) / 10
}

/// Well-known node label keys (Karpenter's, plus Kubernetes' own).
pub mod labels {
    pub const NODEPOOL: &str = "karpenter.sh/nodepool";
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
    pub const INSTANCE_FAMILY: &str = "karpenter.k8s.aws/instance-family";
    pub const INSTANCE_CATEGORY: &str = "karpenter.k8s.aws/instance-category";
    pub const INSTANCE_GENERATION: &str = "karpenter.k8s.aws/instance-generation";
    pub const INSTANCE_SIZE: &str = "karpenter.k8s.aws/instance-size";
    pub const INSTANCE_CPU: &str = "karpenter.k8s.aws/instance-cpu";
    pub const INSTANCE_MEMORY: &str = "karpenter.k8s.aws/instance-memory";
    pub const INSTANCE_HYPERVISOR: &str = "karpenter.k8s.aws/instance-hypervisor";
    pub const INSTANCE_GPU_COUNT: &str = "karpenter.k8s.aws/instance-gpu-count";
    pub const INSTANCE_GPU_MEMORY: &str = "karpenter.k8s.aws/instance-gpu-memory";
    pub const INSTANCE_LOCAL_NVME: &str = "karpenter.k8s.aws/instance-local-nvme";

    /// Keys whose value comes from the instance type (not the pool's template or the offering).
    pub fn is_instance_label(key: &str) -> bool {
        matches!(
            key,
            INSTANCE_TYPE
                | INSTANCE_TYPE_BETA
                | ARCH
                | ARCH_BETA
                | OS
                | OS_BETA
                | INSTANCE_FAMILY
                | INSTANCE_CATEGORY
                | INSTANCE_GENERATION
                | INSTANCE_SIZE
                | INSTANCE_CPU
                | INSTANCE_MEMORY
                | INSTANCE_HYPERVISOR
                | INSTANCE_GPU_COUNT
                | INSTANCE_GPU_MEMORY
                | INSTANCE_LOCAL_NVME
        )
    }

    /// Keys whose value comes from the offering.
    pub fn is_offering_label(key: &str) -> bool {
        matches!(key, ZONE | ZONE_BETA | CAPACITY_TYPE)
    }
}

/// Where a catalog came from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum CatalogSource {
    /// The data compiled into the binary (see `src/cloud/data`).
    Embedded,
    /// Live EC2 Describe* calls.
    Ec2,
}

/// Every instance type of one region with its offerings.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Catalog {
    pub region: String,
    pub source: CatalogSource,
    /// Sorted by name.
    pub types: Vec<InstanceType>,
}

impl Catalog {
    /// All zones offering anything, sorted.
    pub fn zones(&self) -> Vec<String> {
        let mut zones: Vec<String> = self
            .types
            .iter()
            .flat_map(|t| t.offerings.iter().map(|o| o.zone.clone()))
            .collect();
        zones.sort();
        zones.dedup();
        zones
    }

    pub fn get(&self, name: &str) -> Option<&InstanceType> {
        self.types
            .binary_search_by(|t| t.name.as_str().cmp(name))
            .ok()
            .map(|i| &self.types[i])
    }

    /// Marks an offering unavailable (or available again), e.g. after an insufficient-capacity error.
    pub fn set_available(
        &mut self,
        name: &str,
        zone: &str,
        capacity_type: CapacityType,
        available: bool,
    ) {
        if let Ok(i) = self.types.binary_search_by(|t| t.name.as_str().cmp(name)) {
            for offering in &mut self.types[i].offerings {
                if offering.zone == zone && offering.capacity_type == capacity_type {
                    offering.available = available;
                }
            }
        }
    }
}

/// Reads the resource slot a kubelet reservation key names (`cpu`, `memory`, `ephemeral-storage`, `pid` is ignored).
pub fn reservation_slot(name: &str) -> Option<usize> {
    resources::NAMES
        .iter()
        .position(|n| *n == name)
        .filter(|slot| *slot <= EPHEMERAL)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m5_large() -> InstanceType {
        InstanceType {
            name: "m5.large".into(),
            family: "m5".into(),
            category: "m".into(),
            generation: 5,
            size: "large".into(),
            vcpus: 2,
            memory_mib: 8192,
            arch: Arch::Amd64,
            gpus: 0,
            gpu_slot: None,
            gpu_memory_mib: 0,
            max_pods_eni: 29,
            hypervisor: "nitro".into(),
            bare_metal: false,
            current_generation: true,
            local_storage_gb: 0,
            offerings: vec![],
        }
    }

    #[test]
    fn names_split_into_karpenter_labels() {
        assert_eq!(
            InstanceType::split_name("m5dn.24xlarge"),
            ("m5dn".into(), "m".into(), 5, "24xlarge".into())
        );
        assert_eq!(
            InstanceType::split_name("u-6tb1.metal"),
            ("u-6tb1".into(), "u".into(), 6, "metal".into())
        );
        assert_eq!(
            InstanceType::split_name("c7gn.large"),
            ("c7gn".into(), "c".into(), 7, "large".into())
        );
    }

    #[test]
    fn eks_cpu_reservation_follows_the_ami_formula() {
        assert_eq!(eks_cpu_reserved_millis(1), 60);
        assert_eq!(eks_cpu_reserved_millis(2), 70);
        assert_eq!(eks_cpu_reserved_millis(4), 80);
        assert_eq!(eks_cpu_reserved_millis(8), 90);
        assert_eq!(eks_cpu_reserved_millis(96), 310);
    }

    #[test]
    fn m5_large_allocatable_matches_the_formula() {
        let it = m5_large();
        let a = it.allocatable(&KubeletSettings::default());
        assert_eq!(a.0[CPU], 2000 - 70);
        // 8192 × 0.925 = 7577 MiB; minus 11×29+255 = 574 MiB kube-reserved; minus 100 MiB eviction
        assert_eq!(a.0[MEMORY], (7577 - 574 - 100) * MIB);
        assert_eq!(a.0[PODS], 29);
        assert_eq!(a.0[EPHEMERAL], 20 * GIB - GIB - 2 * GIB);
        let custom = KubeletSettings {
            max_pods: Some(110),
            ..Default::default()
        };
        assert_eq!(it.allocatable(&custom).0[PODS], 110);
        assert_eq!(
            it.allocatable(&custom).0[MEMORY],
            (7577 - (11 * 110 + 255) - 100) * MIB
        );
    }

    #[test]
    fn labels_come_from_the_type() {
        let it = m5_large();
        assert_eq!(it.label(labels::INSTANCE_CATEGORY).as_deref(), Some("m"));
        assert_eq!(it.label(labels::INSTANCE_GENERATION).as_deref(), Some("5"));
        assert_eq!(it.label(labels::INSTANCE_MEMORY).as_deref(), Some("8192"));
        assert_eq!(it.label(labels::ARCH).as_deref(), Some("amd64"));
        assert_eq!(it.label(labels::INSTANCE_GPU_COUNT), None);
        assert_eq!(it.label("example.com/team"), None);
    }
}
