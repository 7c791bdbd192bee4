//! What DescribeInstanceTypes reports of one instance type ([`TypeFacts`]), whether from a live
//! answer (`src/cloud/ec2.rs`) or the embedded table, and how Karpenter's AWS provider turns it
//! into labels and device resources ([`TypeFacts::hardware`]).

use crate::model::catalog::{Device, HardwareFacts, label_form};
use crate::model::resources::{AMD_GPU, NVIDIA_GPU};

/// Facts about one instance type, as DescribeInstanceTypes reports them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TypeFacts {
    pub name: String,
    pub vcpus: u32,
    pub memory_mib: u64,
    /// `ProcessorInfo.SupportedArchitectures`.
    pub architectures: Vec<String>,
    /// GPUs of every model (`GpuInfo.Gpus[].Count`, summed).
    pub gpus: u32,
    /// `GpuInfo.TotalGpuMemoryInMiB`.
    pub gpu_memory_mib: u64,
    pub max_enis: u32,
    pub ipv4_per_eni: u32,
    pub hypervisor: String,
    pub bare_metal: bool,
    pub current_generation: bool,
    /// `SupportedUsageClasses` contains `spot`.
    pub spot: bool,
    pub local_storage_gb: u64,
    /// `ProcessorInfo.Manufacturer` (`Intel`, `AMD`, `AWS`).
    pub cpu_manufacturer: Option<String>,
    /// `ProcessorInfo.SustainedClockSpeedInGhz` × 1000, rounded.
    pub cpu_clock_mhz: Option<u32>,
    /// `EbsInfo.EbsOptimizedSupport` (`default`, `supported`, `unsupported`).
    pub ebs_optimized_support: Option<String>,
    /// `EbsInfo.EbsOptimizedInfo.MaximumBandwidthInMbps`.
    pub ebs_max_bandwidth_mbps: Option<u32>,
    /// `NetworkInfo.NetworkCards[].BaselineBandwidthInGbps` summed, × 1000, rounded.
    pub network_baseline_mbps: Option<u32>,
    /// `NetworkInfo.NetworkPerformance` (`Up to 10 Gigabit`, `25 Gigabit`, `Moderate`).
    pub network_performance: Option<String>,
    /// `NetworkInfo.EncryptionInTransitSupported`.
    pub encryption_in_transit: bool,
    /// `GpuInfo.Gpus[]`.
    pub gpu_devices: Vec<DeviceFacts>,
    /// `InferenceAcceleratorInfo.Accelerators[]`.
    pub inference_accelerators: Vec<DeviceFacts>,
    /// `NeuronInfo.NeuronDevices[]` (no manufacturer).
    pub neuron_devices: Vec<DeviceFacts>,
    /// `InstanceStorageInfo.NvmeSupport` (`required`, `supported`, `unsupported`).
    pub nvme_support: Option<String>,
    /// `NetworkInfo.EfaInfo.MaximumEfaInterfaces`.
    pub efa_interfaces: u32,
}

/// One GPU, accelerator or Neuron device model as DescribeInstanceTypes lists it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeviceFacts {
    pub name: String,
    pub manufacturer: String,
    pub count: u32,
    /// Memory of one device.
    pub memory_mib: u64,
    /// Neuron cores of one device (`CoreInfo.Count`); 0 for other devices.
    pub cores: u32,
}

impl TypeFacts {
    /// EKS VPC CNI max pods.
    pub fn max_pods_eni(&self) -> u32 {
        (self.max_enis * self.ipv4_per_eni.saturating_sub(1) + 2).max(1)
    }

    /// The resource slot the GPUs are advertised in: `nvidia.com/gpu` or `amd.com/gpu` by the
    /// first model's manufacturer (none for other makers, e.g. Habana); without device details,
    /// g4ad's are AMD and the rest NVIDIA.
    pub(super) fn gpu_slot(&self, family: &str) -> Option<usize> {
        if self.gpus == 0 {
            return None;
        }
        match self.gpu_devices.first().map(|d| d.manufacturer.as_str()) {
            Some(m) if m.eq_ignore_ascii_case("nvidia") => Some(NVIDIA_GPU),
            Some(m) if m.eq_ignore_ascii_case("amd") => Some(AMD_GPU),
            Some(_) => None,
            None if family.starts_with("g4ad") => Some(AMD_GPU),
            None => Some(NVIDIA_GPU),
        }
    }

    /// AWS publishes no bandwidth figure for types it rates `Low`, `Moderate` or `High`, so
    /// Karpenter (whose bandwidth table comes from AWS's documentation) gives them no
    /// network-bandwidth label; nor does nodewright, though EC2 reports a baseline for them.
    fn vague_network_performance(&self) -> bool {
        self.network_performance
            .as_deref()
            .is_some_and(|p| ["Low", "Moderate", "High"].iter().any(|w| p.contains(w)))
    }

    /// Labels and devices as Karpenter's AWS provider derives them (`computeRequirements`,
    /// `computeCapacity` in its `instancetype/types.go`).
    pub fn hardware(&self) -> HardwareFacts {
        let device = |d: &DeviceFacts, manufacturer: &str| Device {
            name: label_form(&d.name),
            manufacturer: label_form(manufacturer),
            count: d.count,
            memory_mib: d.memory_mib,
        };
        let gpu = match self.gpu_devices.as_slice() {
            [only] => Some(device(only, &only.manufacturer)),
            _ => None,
        };
        // Neuron devices are AWS's; an inference accelerator is labelled only without them.
        let accelerator = match (
            self.neuron_devices.as_slice(),
            self.inference_accelerators.as_slice(),
        ) {
            ([only], _) => Some(device(only, "aws")),
            ([], [only]) => Some(device(only, &only.manufacturer)),
            _ => None,
        };
        HardwareFacts {
            cpu_manufacturer: self.cpu_manufacturer.as_deref().map(label_form),
            cpu_clock_mhz: self.cpu_clock_mhz.unwrap_or(0),
            ebs_bandwidth_mbps: self
                .ebs_max_bandwidth_mbps
                .filter(|_| self.ebs_optimized_support.as_deref() == Some("default")),
            network_bandwidth_mbps: self
                .network_baseline_mbps
                .filter(|_| !self.vague_network_performance()),
            encryption_in_transit: self.encryption_in_transit,
            gpu,
            accelerator,
            local_nvme_gb: self
                .nvme_support
                .as_deref()
                .filter(|s| *s != "unsupported")
                .map(|_| self.local_storage_gb),
            neuron_devices: self.neuron_devices.iter().map(|d| d.count).sum(),
            neuron_cores: self.neuron_devices.first().map_or(0, |d| d.count * d.cores),
            efa_interfaces: self.efa_interfaces,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hardware_follows_karpenters_device_rules() {
        let device = |name: &str, manufacturer: &str, count, memory_mib, cores| DeviceFacts {
            name: name.into(),
            manufacturer: manufacturer.into(),
            count,
            memory_mib,
            cores,
        };
        // dl2q.24xlarge: an inference accelerator without Neuron info.
        let dl2q = TypeFacts {
            inference_accelerators: vec![device("Qualcomm AI100", "Qualcomm", 8, 16000, 0)],
            ..TypeFacts::default()
        }
        .hardware();
        let accelerator = dl2q.accelerator.unwrap();
        assert_eq!(
            (accelerator.name.as_str(), accelerator.manufacturer.as_str()),
            ("qualcomm-ai100", "qualcomm")
        );
        assert_eq!((accelerator.count, dl2q.neuron_devices), (8, 0));
        // inf1: listed both ways; the Neuron device names it, AWS makes it, its cores count.
        let inf1 = TypeFacts {
            inference_accelerators: vec![device("Inferentia", "AWS", 4, 8192, 0)],
            neuron_devices: vec![device("Inferentia", "", 4, 8192, 4)],
            ..TypeFacts::default()
        }
        .hardware();
        let accelerator = inf1.accelerator.unwrap();
        assert_eq!(
            (accelerator.name.as_str(), accelerator.manufacturer.as_str()),
            ("inferentia", "aws")
        );
        assert_eq!((inf1.neuron_devices, inf1.neuron_cores), (4, 16));
        // Two GPU models: no GPU labels (Karpenter labels only a single model).
        let mixed = TypeFacts {
            gpus: 3,
            gpu_devices: vec![
                device("T4", "NVIDIA", 1, 16384, 0),
                device("A10G", "NVIDIA", 2, 22888, 0),
            ],
            ..TypeFacts::default()
        };
        assert_eq!(mixed.hardware().gpu, None);
        assert_eq!(mixed.gpu_slot("g9"), Some(NVIDIA_GPU));
        let slot = |manufacturer: &str, family: &str| {
            TypeFacts {
                gpus: 1,
                gpu_devices: (!manufacturer.is_empty())
                    .then(|| device("X", manufacturer, 1, 0, 0))
                    .into_iter()
                    .collect(),
                ..TypeFacts::default()
            }
            .gpu_slot(family)
        };
        assert_eq!(slot("AMD", "g4ad"), Some(AMD_GPU));
        assert_eq!(slot("Habana", "dl1"), None, "Gaudi is not nvidia.com/gpu");
        assert_eq!(slot("", "g4ad"), Some(AMD_GPU));
        assert_eq!(slot("", "p3"), Some(NVIDIA_GPU));
    }

    #[test]
    fn no_bandwidth_label_where_aws_rates_the_network_in_words() {
        let bandwidth = |performance: &str| {
            TypeFacts {
                network_baseline_mbps: Some(300),
                network_performance: Some(performance.into()),
                ..TypeFacts::default()
            }
            .hardware()
            .network_bandwidth_mbps
        };
        for (performance, label) in [
            ("Up to 10 Gigabit", Some(300)),
            ("25 Gigabit", Some(300)),
            ("4x 100 Gigabit", Some(300)),
            ("Moderate", None),
            ("Low to Moderate", None),
            ("Very Low", None),
            ("High", None),
        ] {
            assert_eq!(bandwidth(performance), label, "{performance}");
        }
    }
}
