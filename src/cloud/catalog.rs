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
use crate::model::resources::{AMD_GPU, NVIDIA_GPU};

/// The region whose on-demand prices are embedded.
pub const PRICED_REGION: &str = "us-east-1";
/// Regions whose zone offerings are embedded.
pub const EMBEDDED_REGIONS: [&str; 2] = ["us-east-1", "eu-west-1"];

const TYPES_CSV: &str = include_str!("data/ec2-instance-types.csv");
const PRICES_CSV: &str = include_str!("data/ec2-on-demand-prices.csv");
const OFFERINGS_US_EAST_1: &str = include_str!("data/ec2-offerings-us-east-1.csv");
const OFFERINGS_EU_WEST_1: &str = include_str!("data/ec2-offerings-eu-west-1.csv");

/// Facts about one instance type, as DescribeInstanceTypes reports them.
#[derive(Clone, Debug, PartialEq)]
pub struct TypeFacts {
    pub name: String,
    pub vcpus: u32,
    pub memory_mib: u64,
    /// `ProcessorInfo.SupportedArchitectures`.
    pub architectures: Vec<String>,
    pub gpus: u32,
    /// GPU manufacturer as EC2 reports it (`NVIDIA`, `AMD`), if known.
    pub gpu_manufacturer: Option<String>,
    pub gpu_memory_mib: u64,
    pub max_enis: u32,
    pub ipv4_per_eni: u32,
    pub hypervisor: String,
    pub bare_metal: bool,
    pub current_generation: bool,
    /// `SupportedUsageClasses` contains `spot`.
    pub spot: bool,
    pub local_storage_gb: u64,
}

impl TypeFacts {
    /// EKS VPC CNI max pods.
    pub fn max_pods_eni(&self) -> u32 {
        (self.max_enis * self.ipv4_per_eni.saturating_sub(1) + 2).max(1)
    }
}

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
            let gpu_slot = (facts.gpus > 0).then(|| match facts.gpu_manufacturer.as_deref() {
                Some(m) if m.eq_ignore_ascii_case("amd") => AMD_GPU,
                Some(_) => NVIDIA_GPU,
                None if family.starts_with("g4ad") => AMD_GPU,
                None => NVIDIA_GPU,
            });
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
    for (line, f) in csv_rows(TYPES_CSV, "ec2-instance-types.csv", 14)? {
        let bad = |what: &str| CatalogError::Data {
            file: "ec2-instance-types.csv",
            line,
            message: format!("bad {what}"),
        };
        let num = |i: usize, what: &str| f[i].parse::<u64>().map_err(|_| bad(what));
        builder.add_type(TypeFacts {
            name: f[0].to_owned(),
            vcpus: num(1, "vcpus")? as u32,
            memory_mib: num(2, "memory_mib")?,
            architectures: f[3].split('|').map(str::to_owned).collect(),
            gpus: num(4, "gpus")? as u32,
            gpu_manufacturer: None,
            gpu_memory_mib: num(5, "gpu_memory_mib")?,
            max_enis: num(6, "max_enis")? as u32,
            ipv4_per_eni: num(7, "ipv4_per_eni")? as u32,
            hypervisor: f[9].to_owned(),
            bare_metal: f[10] == "True",
            current_generation: f[11] == "True",
            spot: f[12].split('|').any(|c| c == "spot"),
            local_storage_gb: num(13, "local_storage_gb")?,
        });
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
    use crate::model::catalog::KubeletSettings;

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
