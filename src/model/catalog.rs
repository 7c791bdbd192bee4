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

use serde::{Deserialize, Serialize};

use super::resources::{self, CPU, EFA, EPHEMERAL, MEMORY, NEURON, NEURONCORE, PODS, Resources};

/// `karpenter.sh/capacity-type` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
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
    /// `nitro`, `xen`, or empty for bare metal.
    pub hypervisor: String,
    pub bare_metal: bool,
    pub current_generation: bool,
    /// Instance storage of any kind, in GB.
    pub local_storage_gb: u64,
    /// The labels and devices Karpenter derives from the rest of DescribeInstanceTypes.
    pub facts: HardwareFacts,
    pub offerings: Vec<Offering>,
}

/// What Karpenter's AWS provider reads from DescribeInstanceTypes beyond names, vCPUs, memory and
/// ENIs, already in the form its labels and resources use (see [`InstanceType::label`]).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HardwareFacts {
    /// `ProcessorInfo.Manufacturer` in label form (`intel`, `amd`, `aws`).
    pub cpu_manufacturer: Option<String>,
    /// `ProcessorInfo.SustainedClockSpeedInGhz` in MHz, rounded; 0 when EC2 reports none.
    pub cpu_clock_mhz: u32,
    /// `EbsOptimizedInfo.MaximumBandwidthInMbps`, for types EBS-optimized by default.
    pub ebs_bandwidth_mbps: Option<u32>,
    /// Baseline network bandwidth in Mbps, summed over the network cards.
    pub network_bandwidth_mbps: Option<u32>,
    /// `NetworkInfo.EncryptionInTransitSupported`.
    pub encryption_in_transit: bool,
    /// The GPU, when the type has exactly one GPU model (Karpenter labels no other).
    pub gpu: Option<Device>,
    /// The accelerator, when the type has exactly one model: its Neuron device (Inferentia 2,
    /// Trainium), else its inference accelerator (Inferentia 1 without Neuron info, Qualcomm).
    pub accelerator: Option<Device>,
    /// Instance storage in GB when it is NVMe.
    pub local_nvme_gb: Option<u64>,
    /// `aws.amazon.com/neuron`: Neuron devices, all models.
    pub neuron_devices: u32,
    /// `aws.amazon.com/neuroncore`: devices × cores per device of the first Neuron model.
    pub neuron_cores: u32,
    /// `vpc.amazonaws.com/efa`: `NetworkInfo.EfaInfo.MaximumEfaInterfaces`.
    pub efa_interfaces: u32,
}

/// One GPU or accelerator model of a type, named as Karpenter's labels name it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Device {
    /// Lower case, spaces as dashes: `a100`, `rtx-pro-4500`, `inferentia2`.
    pub name: String,
    /// Lower case, spaces as dashes: `nvidia`, `aws`.
    pub manufacturer: String,
    pub count: u32,
    /// Memory of one device in MiB (0 when EC2 reports none).
    pub memory_mib: u64,
}

/// Karpenter's `lowerKabobCase`: lower case, spaces replaced by dashes.
pub fn label_form(text: &str) -> String {
    text.replace(' ', "-").to_lowercase()
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
    /// Parses `family.size` into family, category, generation, size. Category and generation
    /// follow Karpenter's `(^[a-z]+)(\-[0-9]+tb)?([0-9]+).*\.` (so `u-6tb1.metal` is category
    /// `u`, generation 1); a name that does not match gets an empty category and generation 0,
    /// which carry no label.
    pub fn split_name(name: &str) -> (String, String, u32, String) {
        let (family, size) = name.split_once('.').unwrap_or((name, ""));
        let (category, generation) = category_and_generation(name).unwrap_or_default();
        (
            family.to_owned(),
            category.to_owned(),
            generation,
            size.to_owned(),
        )
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
        r.0[NEURON] = i64::from(self.facts.neuron_devices);
        r.0[NEURONCORE] = i64::from(self.facts.neuron_cores);
        r.0[EFA] = i64::from(self.facts.efa_interfaces);
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
    /// (or if the label depends on the offering: zone and capacity type). Values are formatted as
    /// Karpenter's AWS provider formats them: memory in MiB, bandwidths in Mbps, clock speed in
    /// MHz, local NVMe in GB, names in lower case with dashes, booleans as `true`/`false`.
    pub fn label(&self, key: &str) -> Option<String> {
        let facts = &self.facts;
        Some(match key {
            labels::INSTANCE_TYPE | labels::INSTANCE_TYPE_BETA => self.name.clone(),
            labels::ARCH | labels::ARCH_BETA => self.arch.as_str().to_owned(),
            labels::OS | labels::OS_BETA => "linux".to_owned(),
            labels::INSTANCE_FAMILY => self.family.clone(),
            labels::INSTANCE_CATEGORY if !self.category.is_empty() => self.category.clone(),
            labels::INSTANCE_GENERATION if !self.category.is_empty() => self.generation.to_string(),
            labels::INSTANCE_SIZE => self.size.clone(),
            labels::INSTANCE_CPU => self.vcpus.to_string(),
            labels::INSTANCE_CPU_MANUFACTURER => facts.cpu_manufacturer.clone()?,
            labels::INSTANCE_CPU_SUSTAINED_CLOCK_SPEED_MHZ => facts.cpu_clock_mhz.to_string(),
            labels::INSTANCE_MEMORY => self.memory_mib.to_string(),
            labels::INSTANCE_EBS_BANDWIDTH => facts.ebs_bandwidth_mbps?.to_string(),
            labels::INSTANCE_NETWORK_BANDWIDTH => facts.network_bandwidth_mbps?.to_string(),
            labels::INSTANCE_HYPERVISOR => self.hypervisor.clone(),
            labels::INSTANCE_ENCRYPTION_IN_TRANSIT_SUPPORTED => {
                facts.encryption_in_transit.to_string()
            }
            labels::INSTANCE_GPU_NAME => facts.gpu.as_ref()?.name.clone(),
            labels::INSTANCE_GPU_MANUFACTURER => facts.gpu.as_ref()?.manufacturer.clone(),
            labels::INSTANCE_GPU_COUNT => facts.gpu.as_ref()?.count.to_string(),
            labels::INSTANCE_GPU_MEMORY => facts.gpu.as_ref()?.memory_mib.to_string(),
            labels::INSTANCE_ACCELERATOR_NAME => facts.accelerator.as_ref()?.name.clone(),
            labels::INSTANCE_ACCELERATOR_MANUFACTURER => {
                facts.accelerator.as_ref()?.manufacturer.clone()
            }
            labels::INSTANCE_ACCELERATOR_COUNT => facts.accelerator.as_ref()?.count.to_string(),
            labels::INSTANCE_LOCAL_NVME => facts.local_nvme_gb?.to_string(),
            labels::INSTANCE_CAPABILITY_FLEX => self.family.contains("-flex").to_string(),
            // Karpenter offers both tenancies; nodewright launches default tenancy only.
            labels::INSTANCE_TENANCY => "default".to_owned(),
            _ => return None,
        })
    }

    /// The `karpenter.k8s.aws/*` labels this type carries, as Karpenter puts them on the Node it
    /// launches (the kubelet sets the instance type, arch and OS labels itself).
    pub fn aws_labels(&self) -> Vec<(&'static str, String)> {
        labels::KARPENTER_AWS_KEYS
            .iter()
            .filter_map(|key| Some((*key, self.label(key)?)))
            .collect()
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

/// Karpenter's instance category and generation (see [`InstanceType::split_name`]).
fn category_and_generation(name: &str) -> Option<(&str, u32)> {
    let digits = |text: &str| text.bytes().take_while(u8::is_ascii_digit).count();
    let category_len = name.bytes().take_while(u8::is_ascii_lowercase).count();
    if category_len == 0 {
        return None;
    }
    let rest = &name[category_len..];
    // An optional `-<n>tb` (u-6tb1), taken only when the generation's digits follow it.
    let after_tb = rest
        .strip_prefix('-')
        .and_then(|r| (digits(r) > 0).then(|| &r[digits(r)..]))
        .and_then(|r| r.strip_prefix("tb"))
        .filter(|r| digits(r) > 0);
    let rest = after_tb.unwrap_or(rest);
    let len = digits(rest);
    if len == 0 || !rest[len..].contains('.') {
        return None;
    }
    Some((&name[..category_len], rest[..len].parse().ok()?))
}

#[cfg(test)]
impl InstanceType {
    /// A type for tests: labels from the name, 2 vCPUs, 8 GiB, amd64 on Nitro, no devices and no
    /// offerings.
    pub(crate) fn example(name: &str) -> InstanceType {
        let (family, category, generation, size) = InstanceType::split_name(name);
        InstanceType {
            name: name.to_owned(),
            family,
            category,
            generation,
            size,
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
            facts: HardwareFacts::default(),
            offerings: vec![],
        }
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

pub use super::labels;

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
            max_pods_eni: 29,
            facts: HardwareFacts {
                cpu_manufacturer: Some("intel".into()),
                cpu_clock_mhz: 3100,
                ebs_bandwidth_mbps: Some(4750),
                network_bandwidth_mbps: Some(750),
                ..HardwareFacts::default()
            },
            ..InstanceType::example("m5.large")
        }
    }

    #[test]
    fn names_split_into_karpenter_labels() {
        let cases = [
            ("m5dn.24xlarge", "m5dn", "m", 5, "24xlarge"),
            ("c7gn.large", "c7gn", "c", 7, "large"),
            ("c7i-flex.large", "c7i-flex", "c", 7, "large"),
            ("trn1n.32xlarge", "trn1n", "trn", 1, "32xlarge"),
            ("p4de.24xlarge", "p4de", "p", 4, "24xlarge"),
            ("x2iezn.12xlarge", "x2iezn", "x", 2, "12xlarge"),
            ("hpc7g.16xlarge", "hpc7g", "hpc", 7, "16xlarge"),
            // Karpenter's scheme skips the memory size of the u- types: generation 1, not 6.
            ("u-6tb1.metal", "u-6tb1", "u", 1, "metal"),
            ("u-3tb1.56xlarge", "u-3tb1", "u", 1, "56xlarge"),
            ("u7i-12tb.224xlarge", "u7i-12tb", "u", 7, "224xlarge"),
            // No digits after the letters: no category or generation label.
            ("mac-m4.metal", "mac-m4", "", 0, "metal"),
            ("m5", "m5", "", 0, ""),
        ];
        for (name, family, category, generation, size) in cases {
            assert_eq!(
                InstanceType::split_name(name),
                (family.into(), category.into(), generation, size.into()),
                "{name}"
            );
        }
        let mac = InstanceType::example("mac-m4.metal");
        assert_eq!(mac.label(labels::INSTANCE_CATEGORY), None);
        assert_eq!(mac.label(labels::INSTANCE_GENERATION), None);
        assert_eq!(
            mac.label(labels::INSTANCE_FAMILY).as_deref(),
            Some("mac-m4")
        );
        let flex = InstanceType::example("c7i-flex.large");
        assert_eq!(
            flex.label(labels::INSTANCE_CAPABILITY_FLEX).as_deref(),
            Some("true")
        );
    }

    #[test]
    fn label_form_is_karpenters_lower_kebab_case() {
        assert_eq!(label_form("RTX PRO Server 6000"), "rtx-pro-server-6000");
        assert_eq!(label_form("NVIDIA"), "nvidia");
        assert_eq!(label_form("Inferentia2"), "inferentia2");
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
        let cases: &[(&str, Option<&str>)] = &[
            (labels::INSTANCE_TYPE, Some("m5.large")),
            (labels::INSTANCE_TYPE_BETA, Some("m5.large")),
            (labels::ARCH, Some("amd64")),
            (labels::OS, Some("linux")),
            (labels::INSTANCE_CATEGORY, Some("m")),
            (labels::INSTANCE_FAMILY, Some("m5")),
            (labels::INSTANCE_GENERATION, Some("5")),
            (labels::INSTANCE_SIZE, Some("large")),
            (labels::INSTANCE_CPU, Some("2")),
            (labels::INSTANCE_MEMORY, Some("8192")),
            (labels::INSTANCE_CPU_MANUFACTURER, Some("intel")),
            (labels::INSTANCE_CPU_SUSTAINED_CLOCK_SPEED_MHZ, Some("3100")),
            (labels::INSTANCE_EBS_BANDWIDTH, Some("4750")),
            (labels::INSTANCE_NETWORK_BANDWIDTH, Some("750")),
            (labels::INSTANCE_HYPERVISOR, Some("nitro")),
            (
                labels::INSTANCE_ENCRYPTION_IN_TRANSIT_SUPPORTED,
                Some("false"),
            ),
            (labels::INSTANCE_CAPABILITY_FLEX, Some("false")),
            (labels::INSTANCE_TENANCY, Some("default")),
            (labels::INSTANCE_GPU_NAME, None),
            (labels::INSTANCE_GPU_COUNT, None),
            (labels::INSTANCE_GPU_MEMORY, None),
            (labels::INSTANCE_ACCELERATOR_NAME, None),
            (labels::INSTANCE_LOCAL_NVME, None),
            (labels::CAPACITY_RESERVATION_ID, None),
            (labels::PLACEMENT_GROUP_ID, None),
            (labels::ZONE, None),
            ("example.com/team", None),
        ];
        for (key, value) in cases {
            assert_eq!(it.label(key).as_deref(), *value, "{key}");
        }
    }

    #[test]
    fn a_node_gets_every_aws_label_its_type_carries() {
        let got = m5_large().aws_labels();
        let keys: Vec<&str> = got.iter().map(|(k, _)| *k).collect();
        assert_eq!(
            keys,
            [
                labels::INSTANCE_CATEGORY,
                labels::INSTANCE_FAMILY,
                labels::INSTANCE_GENERATION,
                labels::INSTANCE_SIZE,
                labels::INSTANCE_CPU,
                labels::INSTANCE_CPU_MANUFACTURER,
                labels::INSTANCE_CPU_SUSTAINED_CLOCK_SPEED_MHZ,
                labels::INSTANCE_MEMORY,
                labels::INSTANCE_EBS_BANDWIDTH,
                labels::INSTANCE_NETWORK_BANDWIDTH,
                labels::INSTANCE_HYPERVISOR,
                labels::INSTANCE_ENCRYPTION_IN_TRANSIT_SUPPORTED,
                labels::INSTANCE_CAPABILITY_FLEX,
                labels::INSTANCE_TENANCY,
            ]
        );
        assert!(got.contains(&(labels::INSTANCE_NETWORK_BANDWIDTH, "750".to_owned())));
    }

    #[test]
    fn device_labels_and_capacity_come_from_the_facts() {
        let gpu = Device {
            name: "a100".into(),
            manufacturer: "nvidia".into(),
            count: 8,
            memory_mib: 40960,
        };
        let it = InstanceType {
            gpus: 8,
            gpu_slot: Some(resources::NVIDIA_GPU),
            gpu_memory_mib: 8 * 40960,
            facts: HardwareFacts {
                gpu: Some(gpu),
                accelerator: Some(Device {
                    name: "trainium".into(),
                    manufacturer: "aws".into(),
                    count: 16,
                    memory_mib: 32768,
                }),
                local_nvme_gb: Some(8000),
                neuron_devices: 16,
                neuron_cores: 32,
                efa_interfaces: 4,
                ..HardwareFacts::default()
            },
            ..InstanceType::example("x9.metal")
        };
        let cases: &[(&str, Option<&str>)] = &[
            (labels::INSTANCE_GPU_NAME, Some("a100")),
            (labels::INSTANCE_GPU_MANUFACTURER, Some("nvidia")),
            (labels::INSTANCE_GPU_COUNT, Some("8")),
            // One GPU's memory, not the total.
            (labels::INSTANCE_GPU_MEMORY, Some("40960")),
            (labels::INSTANCE_ACCELERATOR_NAME, Some("trainium")),
            (labels::INSTANCE_ACCELERATOR_MANUFACTURER, Some("aws")),
            (labels::INSTANCE_ACCELERATOR_COUNT, Some("16")),
            (labels::INSTANCE_LOCAL_NVME, Some("8000")),
            (labels::INSTANCE_CPU_MANUFACTURER, None),
            (labels::INSTANCE_CPU_SUSTAINED_CLOCK_SPEED_MHZ, Some("0")),
            (labels::INSTANCE_EBS_BANDWIDTH, None),
            (labels::INSTANCE_NETWORK_BANDWIDTH, None),
        ];
        for (key, value) in cases {
            assert_eq!(it.label(key).as_deref(), *value, "{key}");
        }
        let capacity = it.capacity(&KubeletSettings::default());
        assert_eq!(capacity.0[resources::NVIDIA_GPU], 8);
        assert_eq!(capacity.0[resources::AMD_GPU], 0);
        assert_eq!(capacity.0[NEURON], 16);
        assert_eq!(capacity.0[NEURONCORE], 32);
        assert_eq!(capacity.0[EFA], 4);
        // Devices are not reserved for the system.
        assert_eq!(
            it.allocatable(&KubeletSettings::default()).0[NEURONCORE],
            32
        );
    }
}
