//! Building a [`Catalog`] from instance-type facts, zone offerings and prices, whatever their
//! source: the embedded snapshot (`src/cloud/data`, copied from AWS's published figures) or live
//! EC2 Describe* calls. Both go through [`CatalogBuilder`], so they price and estimate alike.
//!
//! # Prices
//! - On-demand: the reported price for the region; for a region without one, the us-east-1 price
//!   (marked estimated).
//! - Spot: the reported spot price for the zone (DescribeSpotPriceHistory, latest); otherwise
//!   on-demand × [`PricingSpec::spot_estimate_ratio`] (default 0.35, i.e. the 65 % discount spot
//!   typically gives), marked estimated.
//! - Then the Policy's `pricing.overrides` apply, first match wins (e.g. a savings-plan discount
//!   for a family's on-demand price).
//!
//! Types without any on-demand price and types that cannot run EKS nodes (mac) are left out.

use std::collections::{BTreeMap, HashMap};

use crate::config::PricingSpec;
use crate::model::catalog::{Arch, CapacityType, Catalog, CatalogSource, InstanceType, Offering};

mod facts;

pub use facts::{DeviceFacts, TypeFacts};

/// The region whose on-demand prices are embedded.
pub const PRICED_REGION: &str = "us-east-1";
/// Regions whose zone offerings are embedded.
pub const EMBEDDED_REGIONS: [&str; 2] = ["us-east-1", "eu-west-1"];

const TYPES_CSV: &str = include_str!("data/ec2-instance-types.csv");
const PRICES_CSV: &str = include_str!("data/ec2-on-demand-prices.csv");
const OFFERINGS_US_EAST_1: &str = include_str!("data/ec2-offerings-us-east-1.csv");
const OFFERINGS_EU_WEST_1: &str = include_str!("data/ec2-offerings-eu-west-1.csv");

/// Why a catalog could not be built.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("no embedded offerings for region {region:?} (embedded: {known})", known = EMBEDDED_REGIONS.join(", "))]
    UnknownRegion { region: String },
    #[error("embedded catalog data is malformed at {file} line {line}: {message}")]
    Data {
        file: &'static str,
        line: usize,
        message: String,
    },
}

/// Collects facts, offerings and prices, then builds a [`Catalog`].
#[derive(Debug, Default)]
pub struct CatalogBuilder {
    types: BTreeMap<String, TypeFacts>,
    /// zone → type names
    offerings: BTreeMap<String, Vec<String>>,
    /// (region, type) → USD/h
    on_demand: HashMap<(String, String), f64>,
    /// (zone, type) → USD/h
    spot: HashMap<(String, String), f64>,
}

impl CatalogBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn add_type(&mut self, facts: TypeFacts) {
        self.types.insert(facts.name.clone(), facts);
    }

    pub fn add_offering(&mut self, zone: &str, instance_type: &str) {
        self.offerings
            .entry(zone.to_owned())
            .or_default()
            .push(instance_type.to_owned());
    }

    pub fn add_on_demand_price(&mut self, region: &str, instance_type: &str, price: f64) {
        self.on_demand
            .insert((region.to_owned(), instance_type.to_owned()), price);
    }

    pub fn add_spot_price(&mut self, zone: &str, instance_type: &str, price: f64) {
        self.spot
            .insert((zone.to_owned(), instance_type.to_owned()), price);
    }

    /// The embedded on-demand price table (us-east-1), for sources that report no on-demand prices.
    pub fn with_embedded_prices(mut self) -> Result<Self, CatalogError> {
        for row in csv_rows(PRICES_CSV, "ec2-on-demand-prices.csv", 3)? {
            let (line, fields) = row;
            let price: f64 = fields[2].parse().map_err(|_| CatalogError::Data {
                file: "ec2-on-demand-prices.csv",
                line,
                message: format!("bad price {:?}", fields[2]),
            })?;
            self.add_on_demand_price(fields[0], fields[1], price);
        }
        Ok(self)
    }

    /// Builds the catalog of `region` with the given pricing rules.
    pub fn build(self, region: &str, source: CatalogSource, pricing: &PricingSpec) -> Catalog {
        let mut types = Vec::with_capacity(self.types.len());
        let mut zones_of: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for (zone, names) in &self.offerings {
            for name in names {
                zones_of
                    .entry(name.as_str())
                    .or_default()
                    .push(zone.as_str());
            }
        }
        for (name, facts) in &self.types {
            let Some(arch) = Arch::from_ec2(facts.architectures.iter().map(String::as_str)) else {
                continue;
            };
            let Some(zones) = zones_of.get(name.as_str()) else {
                continue;
            };
            let (on_demand, od_estimated) =
                match self.on_demand.get(&(region.to_owned(), name.clone())) {
                    Some(p) => (*p, false),
                    None => match self
                        .on_demand
                        .get(&(PRICED_REGION.to_owned(), name.clone()))
                    {
                        Some(p) => (*p, true),
                        None => continue,
                    },
                };
            let (family, category, generation, size) = InstanceType::split_name(name);
            let gpu_slot = facts.gpu_slot(&family);
            let mut offerings = Vec::new();
            for zone in zones {
                let (price, estimated) = pricing.apply(
                    name,
                    &family,
                    CapacityType::OnDemand,
                    on_demand,
                    od_estimated,
                );
                offerings.push(Offering {
                    zone: (*zone).to_owned(),
                    capacity_type: CapacityType::OnDemand,
                    price,
                    price_estimated: estimated,
                    available: true,
                });
                if facts.spot {
                    let (spot, spot_estimated) =
                        match self.spot.get(&((*zone).to_owned(), name.clone())) {
                            Some(p) => (*p, false),
                            None => (on_demand * pricing.spot_estimate_ratio(), true),
                        };
                    let (price, estimated) =
                        pricing.apply(name, &family, CapacityType::Spot, spot, spot_estimated);
                    offerings.push(Offering {
                        zone: (*zone).to_owned(),
                        capacity_type: CapacityType::Spot,
                        price,
                        price_estimated: estimated,
                        available: true,
                    });
                }
            }
            types.push(InstanceType {
                name: name.clone(),
                family,
                category,
                generation,
                size,
                vcpus: facts.vcpus,
                memory_mib: facts.memory_mib,
                arch,
                gpus: facts.gpus,
                gpu_slot,
                gpu_memory_mib: facts.gpu_memory_mib,
                max_pods_eni: facts.max_pods_eni(),
                hypervisor: facts.hypervisor.clone(),
                bare_metal: facts.bare_metal,
                current_generation: facts.current_generation,
                local_storage_gb: facts.local_storage_gb,
                facts: facts.hardware(),
                offerings,
            });
        }
        Catalog {
            region: region.to_owned(),
            source,
            types,
        }
    }
}

/// The catalog compiled into the binary, for `region` (us-east-1 or eu-west-1).
pub fn embedded(region: &str, pricing: &PricingSpec) -> Result<Catalog, CatalogError> {
    let offerings = match region {
        "us-east-1" => OFFERINGS_US_EAST_1,
        "eu-west-1" => OFFERINGS_EU_WEST_1,
        other => {
            return Err(CatalogError::UnknownRegion {
                region: other.to_owned(),
            });
        }
    };
    let mut builder = CatalogBuilder::new().with_embedded_prices()?;
    for (line, fields) in csv_rows(TYPES_CSV, TYPES_FILE, TYPES_COLUMNS)? {
        builder.add_type(type_row(line, &fields)?);
    }
    let file = if region == "us-east-1" {
        "ec2-offerings-us-east-1.csv"
    } else {
        "ec2-offerings-eu-west-1.csv"
    };
    for (_, f) in csv_rows(offerings, file, 2)? {
        builder.add_offering(f[0], f[1]);
    }
    Ok(builder.build(region, CatalogSource::Embedded, pricing))
}

const TYPES_FILE: &str = "ec2-instance-types.csv";
const TYPES_COLUMNS: usize = 26;

/// One row of the embedded instance-type table (columns: see scripts/gen-instance-types.py).
fn type_row(line: usize, f: &[&str]) -> Result<TypeFacts, CatalogError> {
    let bad = |i: usize, what: &str| CatalogError::Data {
        file: TYPES_FILE,
        line,
        message: format!("bad {what} {:?}", f[i]),
    };
    let num = |i: usize, what: &str| f[i].parse::<u64>().map_err(|_| bad(i, what));
    let count = |i: usize, what: &str| f[i].parse::<u32>().map_err(|_| bad(i, what));
    let optional = |i: usize, what: &str| -> Result<Option<u32>, CatalogError> {
        (!f[i].is_empty()).then(|| count(i, what)).transpose()
    };
    let text = |i: usize| (!f[i].is_empty()).then(|| f[i].to_owned());
    let devices = |i: usize, what: &str| -> Result<Vec<DeviceFacts>, CatalogError> {
        if f[i].is_empty() {
            return Ok(Vec::new());
        }
        f[i].split('|')
            .map(|d| parse_device(d).ok_or_else(|| bad(i, what)))
            .collect()
    };
    Ok(TypeFacts {
        name: f[0].to_owned(),
        vcpus: count(1, "vcpus")?,
        memory_mib: num(2, "memory_mib")?,
        architectures: f[3].split('|').map(str::to_owned).collect(),
        gpus: count(4, "gpus")?,
        gpu_memory_mib: num(5, "gpu_memory_mib")?,
        max_enis: count(6, "max_enis")?,
        ipv4_per_eni: count(7, "ipv4_per_eni")?,
        hypervisor: f[9].to_owned(),
        bare_metal: f[10] == "True",
        current_generation: f[11] == "True",
        spot: f[12].split('|').any(|c| c == "spot"),
        local_storage_gb: num(13, "local_storage_gb")?,
        cpu_manufacturer: text(14),
        cpu_clock_mhz: optional(15, "cpu_clock_mhz")?,
        ebs_optimized_support: text(16),
        ebs_max_bandwidth_mbps: optional(17, "ebs_max_bandwidth_mbps")?,
        network_baseline_mbps: optional(18, "network_baseline_mbps")?,
        network_performance: text(19),
        encryption_in_transit: f[20] == "True",
        gpu_devices: devices(21, "gpu_devices")?,
        inference_accelerators: devices(22, "inference_accelerators")?,
        neuron_devices: devices(23, "neuron_devices")?,
        nvme_support: text(24),
        efa_interfaces: optional(25, "efa_interfaces")?.unwrap_or(0),
    })
}

/// `name:manufacturer:count:memory_mib[:cores]`, empty numbers as 0.
fn parse_device(text: &str) -> Option<DeviceFacts> {
    let fields: Vec<&str> = text.split(':').collect();
    let number = |i: usize| -> Option<u64> {
        match fields.get(i) {
            None | Some(&"") => Some(0),
            Some(n) => n.parse().ok(),
        }
    };
    if !(4..=5).contains(&fields.len()) {
        return None;
    }
    Some(DeviceFacts {
        name: fields[0].to_owned(),
        manufacturer: fields[1].to_owned(),
        count: u32::try_from(number(2)?).ok()?,
        memory_mib: number(3)?,
        cores: u32::try_from(number(4)?).ok()?,
    })
}

/// Data rows of a small CSV with `#` comments and one header line.
fn csv_rows<'a>(
    text: &'a str,
    file: &'static str,
    columns: usize,
) -> Result<Vec<(usize, Vec<&'a str>)>, CatalogError> {
    let mut rows = Vec::new();
    let mut header_seen = false;
    for (i, line) in text.lines().enumerate() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        if !header_seen {
            header_seen = true;
            continue;
        }
        let fields: Vec<&str> = line.split(',').collect();
        if fields.len() != columns {
            return Err(CatalogError::Data {
                file,
                line: i + 1,
                message: format!("expected {columns} fields, found {}", fields.len()),
            });
        }
        rows.push((i + 1, fields));
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PriceOverride;
    use crate::model::catalog::{HardwareFacts, KubeletSettings};

    #[test]
    fn embedded_catalog_has_priced_types_in_six_zones() {
        let catalog = embedded("us-east-1", &PricingSpec::default()).unwrap();
        assert!(catalog.types.len() > 1200, "{}", catalog.types.len());
        assert_eq!(
            catalog.zones(),
            [
                "us-east-1a",
                "us-east-1b",
                "us-east-1c",
                "us-east-1d",
                "us-east-1e",
                "us-east-1f"
            ]
        );
        let m5 = catalog.get("m5.large").unwrap();
        let od = m5
            .offerings
            .iter()
            .find(|o| o.zone == "us-east-1a" && o.capacity_type == CapacityType::OnDemand)
            .unwrap();
        assert_eq!(od.price, 0.096);
        assert!(!od.price_estimated);
        let spot = m5
            .offerings
            .iter()
            .find(|o| o.zone == "us-east-1a" && o.capacity_type == CapacityType::Spot)
            .unwrap();
        assert!(spot.price_estimated);
        assert!((spot.price - 0.096 * 0.35).abs() < 1e-9);
        assert!(
            catalog.get("mac1.metal").is_none(),
            "mac types cannot run EKS nodes"
        );
        assert_eq!(m5.allocatable(&KubeletSettings::default()).0[3], 29);
    }

    /// Karpenter's labels of well-known types, from AWS's published specifications: p4d.24xlarge
    /// has 8 NVIDIA A100 of 40 GiB, 4 EFA, 4 × 100 Gbps, 8 × 1000 GB NVMe; inf2.xlarge one
    /// Inferentia2 of 2 NeuronCores; trn1.32xlarge 16 Trainium (32 NeuronCores), 8 EFA,
    /// 800 Gbps; m5.large 0.75 Gbps baseline and 4,750 Mbps EBS on a 3.1 GHz Intel; metal types
    /// have no hypervisor; c3 has SSD instance storage that is not NVMe and no default EBS
    /// optimization.
    #[test]
    fn embedded_types_carry_karpenters_labels() {
        use crate::model::catalog::labels::*;
        let catalog = embedded("us-east-1", &PricingSpec::default()).unwrap();
        let cases: &[(&str, &str, Option<&str>)] = &[
            ("p4d.24xlarge", INSTANCE_CATEGORY, Some("p")),
            ("p4d.24xlarge", INSTANCE_GENERATION, Some("4")),
            ("p4d.24xlarge", INSTANCE_GPU_NAME, Some("a100")),
            ("p4d.24xlarge", INSTANCE_GPU_MANUFACTURER, Some("nvidia")),
            ("p4d.24xlarge", INSTANCE_GPU_COUNT, Some("8")),
            ("p4d.24xlarge", INSTANCE_GPU_MEMORY, Some("40960")),
            ("p4d.24xlarge", INSTANCE_NETWORK_BANDWIDTH, Some("400000")),
            ("p4d.24xlarge", INSTANCE_LOCAL_NVME, Some("8000")),
            ("p4d.24xlarge", INSTANCE_CPU_MANUFACTURER, Some("intel")),
            ("p4d.24xlarge", INSTANCE_ACCELERATOR_NAME, None),
            ("p5.48xlarge", INSTANCE_GPU_NAME, Some("h100")),
            ("p5.48xlarge", INSTANCE_GPU_MEMORY, Some("81920")),
            ("g4dn.xlarge", INSTANCE_GPU_NAME, Some("t4")),
            ("g4dn.xlarge", INSTANCE_GPU_COUNT, Some("1")),
            ("g4dn.xlarge", INSTANCE_LOCAL_NVME, Some("125")),
            (
                "inf2.xlarge",
                INSTANCE_ACCELERATOR_NAME,
                Some("inferentia2"),
            ),
            (
                "inf2.xlarge",
                INSTANCE_ACCELERATOR_MANUFACTURER,
                Some("aws"),
            ),
            ("inf2.xlarge", INSTANCE_ACCELERATOR_COUNT, Some("1")),
            ("inf2.xlarge", INSTANCE_CPU_MANUFACTURER, Some("amd")),
            ("inf2.xlarge", INSTANCE_NETWORK_BANDWIDTH, Some("2083")),
            ("inf2.xlarge", INSTANCE_GPU_COUNT, None),
            ("inf1.xlarge", INSTANCE_ACCELERATOR_NAME, Some("inferentia")),
            ("trn1.32xlarge", INSTANCE_ACCELERATOR_NAME, Some("trainium")),
            ("trn1.32xlarge", INSTANCE_ACCELERATOR_COUNT, Some("16")),
            ("trn1.32xlarge", INSTANCE_NETWORK_BANDWIDTH, Some("800000")),
            ("m5.large", INSTANCE_NETWORK_BANDWIDTH, Some("750")),
            ("m5.large", INSTANCE_EBS_BANDWIDTH, Some("4750")),
            (
                "m5.large",
                INSTANCE_CPU_SUSTAINED_CLOCK_SPEED_MHZ,
                Some("3100"),
            ),
            ("m5.large", INSTANCE_HYPERVISOR, Some("nitro")),
            (
                "m5.large",
                INSTANCE_ENCRYPTION_IN_TRANSIT_SUPPORTED,
                Some("false"),
            ),
            ("m5.large", INSTANCE_CAPABILITY_FLEX, Some("false")),
            ("m5.large", INSTANCE_LOCAL_NVME, None),
            ("m5.metal", INSTANCE_HYPERVISOR, Some("")),
            (
                "m6i.large",
                INSTANCE_ENCRYPTION_IN_TRANSIT_SUPPORTED,
                Some("true"),
            ),
            ("a1.large", INSTANCE_CPU_MANUFACTURER, Some("aws")),
            ("i3.large", INSTANCE_LOCAL_NVME, Some("475")),
            ("i3.large", INSTANCE_HYPERVISOR, Some("xen")),
            // Rated "Moderate": AWS publishes no bandwidth, so there is no label.
            ("m3.medium", INSTANCE_NETWORK_BANDWIDTH, None),
            ("t3.micro", INSTANCE_NETWORK_BANDWIDTH, Some("64")),
            ("c3.large", INSTANCE_LOCAL_NVME, None),
            ("c3.large", INSTANCE_EBS_BANDWIDTH, None),
        ];
        for (name, key, value) in cases {
            let it = catalog.get(name).unwrap_or_else(|| panic!("{name}"));
            assert_eq!(it.label(key).as_deref(), *value, "{name} {key}");
        }
    }

    #[test]
    fn embedded_types_provide_devices() {
        use crate::model::resources::{AMD_GPU, EFA, NEURON, NEURONCORE, NVIDIA_GPU};
        let catalog = embedded("us-east-1", &PricingSpec::default()).unwrap();
        let kubelet = KubeletSettings::default();
        // (type, nvidia.com/gpu, amd.com/gpu, neuron, neuroncore, efa)
        let cases = [
            ("p4d.24xlarge", 8, 0, 0, 0, 4),
            ("p5.48xlarge", 8, 0, 0, 0, 32),
            ("inf2.xlarge", 0, 0, 1, 2, 0),
            ("inf1.xlarge", 0, 0, 1, 4, 0),
            ("trn1.32xlarge", 0, 0, 16, 32, 8),
            ("c6in.32xlarge", 0, 0, 0, 0, 2),
            ("m5.large", 0, 0, 0, 0, 0),
        ];
        for (name, nvidia, amd, neuron, cores, efa) in cases {
            let a = catalog.get(name).unwrap().allocatable(&kubelet);
            assert_eq!(
                [
                    a.0[NVIDIA_GPU],
                    a.0[AMD_GPU],
                    a.0[NEURON],
                    a.0[NEURONCORE],
                    a.0[EFA]
                ],
                [nvidia, amd, neuron, cores, efa],
                "{name}"
            );
        }
    }

    #[test]
    fn embedded_rows_without_described_facts_carry_no_such_labels() {
        let header = "instance_type,x\n";
        let row = "z9.large,2,4096,x86_64,0,0,3,10,29,nitro,False,True,on-demand,0,,,,,,,,,,,,";
        let text = format!("{header}{row}");
        let (line, fields) = csv_rows(&text, TYPES_FILE, TYPES_COLUMNS)
            .unwrap()
            .remove(0);
        let facts = type_row(line, &fields).unwrap();
        assert_eq!(facts.hardware(), HardwareFacts::default());
        let bad = row.replace(",,,,,,,,,,,,", ",,,,,,,,A100:NVIDIA:eight:1,,,,");
        let text = format!("{header}{bad}");
        let (line, fields) = csv_rows(&text, TYPES_FILE, TYPES_COLUMNS)
            .unwrap()
            .remove(0);
        let err = type_row(line, &fields).unwrap_err().to_string();
        assert!(
            err.contains("line 2") && err.contains("gpu_devices"),
            "{err}"
        );
    }

    #[test]
    fn other_regions_estimate_on_demand_from_us_east_1() {
        let catalog = embedded("eu-west-1", &PricingSpec::default()).unwrap();
        let m5 = catalog.get("m5.large").unwrap();
        assert!(m5.offerings.iter().all(|o| o.price_estimated));
        assert!(matches!(
            embedded("mars-1", &PricingSpec::default()),
            Err(CatalogError::UnknownRegion { .. })
        ));
    }

    #[test]
    fn overrides_discount_a_family() {
        let pricing = PricingSpec {
            spot_estimate_ratio: None,
            overrides: vec![PriceOverride {
                instance_families: vec!["m5".into()],
                instance_types: vec![],
                capacity_type: Some("on-demand".into()),
                discount_percent: Some(28.0),
                price_per_hour: None,
            }],
        };
        let catalog = embedded("us-east-1", &pricing).unwrap();
        let m5 = catalog.get("m5.large").unwrap();
        let od = m5
            .offerings
            .iter()
            .find(|o| o.capacity_type == CapacityType::OnDemand)
            .unwrap();
        assert!((od.price - 0.096 * 0.72).abs() < 1e-9);
        let c5 = catalog.get("c5.large").unwrap();
        assert_eq!(c5.offerings[0].price, 0.085);
    }
}
