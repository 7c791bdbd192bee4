//! The live instance catalog from EC2: DescribeInstanceTypes, DescribeInstanceTypeOfferings and
//! DescribeSpotPriceHistory, turned into a [`Catalog`] by the same [`CatalogBuilder`] as the
//! embedded snapshot, and kept fresh in the background by [`CatalogCache`] so that the hot path
//! never calls AWS.
//!
//! EC2 has no on-demand price API (that is the Pricing service), so on-demand prices come from the
//! embedded table; spot prices the history lacks are estimated by the builder.
//!
//! AWS access goes through the standard chain (`AWS_REGION`, credentials from the environment,
//! profiles, web identity, container and instance metadata; `AWS_ENDPOINT_URL_EC2` /
//! `AWS_ENDPOINT_URL`). The HTTP client is hyper with rustls on ring, which the service already
//! links, instead of the SDK's default (aws-lc-rs, a long C build).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use aws_config::BehaviorVersion;
use aws_sdk_ec2::Client;
use aws_sdk_ec2::config::{Region, SharedHttpClient};
use aws_sdk_ec2::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_ec2::primitives::DateTime;
use aws_sdk_ec2::types::{InstanceTypeInfo, LocationType, UsageClassType};
use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode};
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::catalog::{CatalogBuilder, CatalogError, DeviceFacts, TypeFacts, embedded};
use crate::config::PricingSpec;
use crate::model::catalog::{Catalog, CatalogSource};

/// Largest page each call allows (fewer round trips than the service default).
const INSTANCE_TYPES_PAGE: i32 = 100;
const OFFERINGS_PAGE: i32 = 1000;
const SPOT_PRICES_PAGE: i32 = 1000;
/// The spot product whose prices apply to EKS nodes.
const LINUX_SPOT_PRODUCT: &str = "Linux/UNIX";

/// Why the live catalog could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum Ec2Error {
    /// An EC2 call failed. `code` is EC2's error code (`UnauthorizedOperation`,
    /// `RequestLimitExceeded`, ...) or, when no response came back, the kind of failure
    /// (`DispatchFailure`, `Timeout`, `ResponseError`, `ConstructionFailure`).
    #[error("EC2 {call} failed: {code}: {message}")]
    Call {
        call: &'static str,
        code: String,
        message: String,
    },
    /// EC2 answered, but nothing in the answer could be used (no offered type with a price).
    #[error("EC2 returned no usable instance types for region {region}")]
    Empty { region: String },
    /// The embedded on-demand price table is malformed.
    #[error(transparent)]
    Catalog(#[from] CatalogError),
}

impl Ec2Error {
    /// A short, bounded identifier of the failure, for logs and metric labels.
    pub fn code(&self) -> &str {
        match self {
            Self::Call { code, .. } => code,
            Self::Empty { .. } => "Empty",
            Self::Catalog(_) => "EmbeddedData",
        }
    }

    fn call<E, R>(call: &'static str, err: SdkError<E, R>) -> Self
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
        R: std::fmt::Debug,
    {
        let code = match &err {
            SdkError::ServiceError(_) => err.code().unwrap_or("Unknown"),
            SdkError::TimeoutError(_) => "Timeout",
            SdkError::DispatchFailure(_) => "DispatchFailure",
            SdkError::ResponseError(_) => "ResponseError",
            SdkError::ConstructionFailure(_) => "ConstructionFailure",
            _ => "Unknown",
        }
        .to_owned();
        let message = match err.message() {
            Some(message) => message.to_owned(),
            None => DisplayErrorContext(&err).to_string(),
        };
        Self::Call {
            call,
            code,
            message,
        }
    }
}

/// hyper + rustls (ring) + the system's root certificates, for every AWS client of the service.
pub fn http_client() -> SharedHttpClient {
    aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(CryptoMode::Ring))
        .build_https()
}

/// The standard AWS configuration chain, with [`http_client`]; callers may override parts
/// (region, endpoint, credentials) before `load()`.
pub fn config_loader() -> aws_config::ConfigLoader {
    aws_config::defaults(BehaviorVersion::latest()).http_client(http_client())
}

/// An EC2 client from the standard chain; `region` overrides the chain's region.
pub async fn client_from_env(region: Option<&str>) -> Client {
    let mut loader = config_loader();
    if let Some(region) = region {
        loader = loader.region(Region::new(region.to_owned()));
    }
    // Not `RegionProviderChain::or_default_provider()`: that chain builds its own IMDS client
    // without the loader's HTTP client.
    Client::new(&loader.load().await)
}

/// Loads the catalog of `region` from EC2 (every page of every call).
pub async fn load_catalog(
    client: &Client,
    region: &str,
    pricing: &PricingSpec,
) -> Result<Catalog, Ec2Error> {
    let mut builder = CatalogBuilder::new().with_embedded_prices()?;

    let infos = client
        .describe_instance_types()
        .max_results(INSTANCE_TYPES_PAGE)
        .into_paginator()
        .items()
        .send()
        .try_collect()
        .await
        .map_err(|e| Ec2Error::call("DescribeInstanceTypes", e))?;
    let described = infos.len();
    for info in &infos {
        if let Some(facts) = type_facts(info) {
            builder.add_type(facts);
        }
    }

    let offerings = client
        .describe_instance_type_offerings()
        .location_type(LocationType::AvailabilityZone)
        .max_results(OFFERINGS_PAGE)
        .into_paginator()
        .items()
        .send()
        .try_collect()
        .await
        .map_err(|e| Ec2Error::call("DescribeInstanceTypeOfferings", e))?;
    for offering in &offerings {
        if let (Some(zone), Some(name)) = (offering.location(), offering.instance_type()) {
            builder.add_offering(zone, name.as_str());
        }
    }

    let history = client
        .describe_spot_price_history()
        .product_descriptions(LINUX_SPOT_PRODUCT)
        .start_time(DateTime::from(SystemTime::now()))
        .max_results(SPOT_PRICES_PAGE)
        .into_paginator()
        .items()
        .send()
        .try_collect()
        .await
        .map_err(|e| Ec2Error::call("DescribeSpotPriceHistory", e))?;
    // The history may hold several prices per zone and type: keep the latest.
    let mut latest: HashMap<(&str, &str), (&DateTime, f64)> = HashMap::new();
    for entry in &history {
        let (Some(zone), Some(name), Some(price), Some(at)) = (
            entry.availability_zone(),
            entry.instance_type(),
            entry.spot_price().and_then(|p| p.parse::<f64>().ok()),
            entry.timestamp(),
        ) else {
            continue;
        };
        if !(price.is_finite() && price > 0.0) {
            continue;
        }
        let slot = latest.entry((zone, name.as_str())).or_insert((at, price));
        if at > slot.0 {
            *slot = (at, price);
        }
    }
    for ((zone, name), (_, price)) in &latest {
        builder.add_spot_price(zone, name, *price);
    }

    let catalog = builder.build(region, CatalogSource::Ec2, pricing);
    debug!(
        region,
        described,
        offerings = offerings.len(),
        spot_prices = latest.len(),
        types = catalog.types.len(),
        "loaded the EC2 catalog"
    );
    if catalog.types.is_empty() {
        return Err(Ec2Error::Empty {
            region: region.to_owned(),
        });
    }
    Ok(catalog)
}

/// The facts of one described type; `None` (logged) when a field scheduling needs is missing.
fn type_facts(info: &InstanceTypeInfo) -> Option<TypeFacts> {
    let name = info.instance_type()?.as_str();
    let missing = |field: &str| {
        debug!(
            instance_type = name,
            field, "skipping instance type: field missing or invalid"
        );
    };
    let Some(vcpus) = info
        .v_cpu_info()
        .and_then(|v| v.default_v_cpus())
        .and_then(|v| u32::try_from(v).ok())
    else {
        missing("VCpuInfo.DefaultVCpus");
        return None;
    };
    let Some(memory_mib) = info
        .memory_info()
        .and_then(|m| m.size_in_mib())
        .and_then(|m| u64::try_from(m).ok())
    else {
        missing("MemoryInfo.SizeInMiB");
        return None;
    };
    let network = info.network_info();
    let Some(max_enis) = network
        .and_then(|n| n.maximum_network_interfaces())
        .and_then(|n| u32::try_from(n).ok())
    else {
        missing("NetworkInfo.MaximumNetworkInterfaces");
        return None;
    };
    let Some(ipv4_per_eni) = network
        .and_then(|n| n.ipv4_addresses_per_interface())
        .and_then(|n| u32::try_from(n).ok())
    else {
        missing("NetworkInfo.Ipv4AddressesPerInterface");
        return None;
    };
    let architectures = info
        .processor_info()
        .map(|p| {
            p.supported_architectures()
                .iter()
                .map(|a| a.as_str().to_owned())
                .collect()
        })
        .unwrap_or_default();
    let gpu_devices = info.gpu_info().map(|g| g.gpus()).unwrap_or_default();
    let gpus = gpu_devices
        .iter()
        .filter_map(|d| d.count().and_then(|c| u32::try_from(c).ok()))
        .sum();
    // Total over all GPUs; from the devices when EC2 leaves the total out.
    let gpu_memory_mib = info
        .gpu_info()
        .and_then(|g| g.total_gpu_memory_in_mib())
        .and_then(|m| u64::try_from(m).ok())
        .unwrap_or_else(|| {
            gpu_devices
                .iter()
                .filter_map(|d| {
                    let count = u64::try_from(d.count()?).ok()?;
                    let each = u64::try_from(d.memory_info()?.size_in_mib()?).ok()?;
                    Some(count * each)
                })
                .sum()
        });
    let processor = info.processor_info();
    let ebs = info.ebs_info();
    let cards = network.map(|n| n.network_cards()).unwrap_or_default();
    // Rounded to whole Mbps, as the embedded table (scripts/gen-instance-types.py) rounds them.
    let network_baseline_mbps = (!cards.is_empty())
        .then(|| {
            cards
                .iter()
                .map(|c| c.baseline_bandwidth_in_gbps())
                .sum::<Option<f64>>()
        })
        .flatten()
        .and_then(|gbps| mbps(gbps * 1000.0));
    let gpu_entries = gpu_devices
        .iter()
        .map(|d| DeviceFacts {
            name: d.name().unwrap_or_default().to_owned(),
            manufacturer: d.manufacturer().unwrap_or_default().to_owned(),
            count: count(d.count()),
            memory_mib: size(d.memory_info().and_then(|m| m.size_in_mib())),
            cores: 0,
        })
        .collect();
    let inference_accelerators = info
        .inference_accelerator_info()
        .map(|a| a.accelerators())
        .unwrap_or_default()
        .iter()
        .map(|d| DeviceFacts {
            name: d.name().unwrap_or_default().to_owned(),
            manufacturer: d.manufacturer().unwrap_or_default().to_owned(),
            count: count(d.count()),
            memory_mib: size(d.memory_info().and_then(|m| m.size_in_mib())),
            cores: 0,
        })
        .collect();
    let neuron_devices = info
        .neuron_info()
        .map(|n| n.neuron_devices())
        .unwrap_or_default()
        .iter()
        .map(|d| DeviceFacts {
            name: d.name().unwrap_or_default().to_owned(),
            manufacturer: String::new(),
            count: count(d.count()),
            memory_mib: size(d.memory_info().and_then(|m| m.size_in_mib())),
            cores: count(d.core_info().and_then(|c| c.count())),
        })
        .collect();
    Some(TypeFacts {
        name: name.to_owned(),
        vcpus,
        memory_mib,
        architectures,
        gpus,
        gpu_memory_mib,
        max_enis,
        ipv4_per_eni,
        // Bare-metal types have no hypervisor.
        hypervisor: info
            .hypervisor()
            .map(|h| h.as_str().to_owned())
            .unwrap_or_default(),
        bare_metal: info.bare_metal().unwrap_or(false),
        current_generation: info.current_generation().unwrap_or(false),
        spot: info
            .supported_usage_classes()
            .contains(&UsageClassType::Spot),
        local_storage_gb: info
            .instance_storage_info()
            .and_then(|s| s.total_size_in_gb())
            .and_then(|s| u64::try_from(s).ok())
            .unwrap_or(0),
        cpu_manufacturer: processor.and_then(|p| p.manufacturer()).map(str::to_owned),
        cpu_clock_mhz: processor
            .and_then(|p| p.sustained_clock_speed_in_ghz())
            .and_then(|ghz| mbps(ghz * 1000.0)),
        ebs_optimized_support: ebs
            .and_then(|e| e.ebs_optimized_support())
            .map(|s| s.as_str().to_owned()),
        ebs_max_bandwidth_mbps: ebs
            .and_then(|e| e.ebs_optimized_info())
            .and_then(|o| o.maximum_bandwidth_in_mbps())
            .and_then(|m| u32::try_from(m).ok()),
        network_baseline_mbps,
        network_performance: network
            .and_then(|n| n.network_performance())
            .map(str::to_owned),
        encryption_in_transit: network
            .and_then(|n| n.encryption_in_transit_supported())
            .unwrap_or(false),
        gpu_devices: gpu_entries,
        inference_accelerators,
        neuron_devices,
        nvme_support: info
            .instance_storage_info()
            .and_then(|s| s.nvme_support())
            .map(|s| s.as_str().to_owned()),
        efa_interfaces: count(
            network
                .and_then(|n| n.efa_info())
                .and_then(|e| e.maximum_efa_interfaces()),
        ),
    })
}

/// A device count EC2 reports (negative or missing: none).
fn count(value: Option<i32>) -> u32 {
    value.and_then(|v| u32::try_from(v).ok()).unwrap_or(0)
}

/// A size in MiB EC2 reports (negative or missing: 0).
fn size(value: Option<i32>) -> u64 {
    value.and_then(|v| u64::try_from(v).ok()).unwrap_or(0)
}

/// A non-negative float rounded half away from zero to a whole number (MHz, Mbps).
fn mbps(value: f64) -> Option<u32> {
    let rounded = value.round();
    (rounded.is_finite() && (0.0..=f64::from(u32::MAX)).contains(&rounded))
        .then_some(rounded as u32)
}

/// The catalog the service schedules with: starts from the embedded snapshot of the region (or
/// empty, for a region without one) and is replaced by each successful EC2 load. A failed load
/// keeps the last good catalog.
pub struct CatalogCache {
    region: String,
    pricing: PricingSpec,
    catalog: ArcSwap<Catalog>,
}

impl CatalogCache {
    pub fn new(region: &str, pricing: PricingSpec) -> Self {
        let catalog = match embedded(region, &pricing) {
            Ok(catalog) => catalog,
            Err(err) => {
                warn!(
                    region,
                    error = %err,
                    "no embedded catalog for this region: starting with an empty catalog until EC2 answers"
                );
                Catalog {
                    region: region.to_owned(),
                    source: CatalogSource::Embedded,
                    types: Vec::new(),
                }
            }
        };
        Self {
            region: region.to_owned(),
            pricing,
            catalog: ArcSwap::from_pointee(catalog),
        }
    }

    /// The catalog now; cheap (an `Arc` clone), never waits for EC2.
    pub fn current(&self) -> Arc<Catalog> {
        self.catalog.load_full()
    }

    /// Loads the catalog from EC2 and, if that worked, makes it current.
    pub async fn refresh_once(&self, client: &Client) -> Result<(), Ec2Error> {
        let catalog = load_catalog(client, &self.region, &self.pricing).await?;
        info!(
            region = %self.region,
            types = catalog.types.len(),
            zones = catalog.zones().len(),
            "instance catalog refreshed from EC2"
        );
        self.catalog.store(Arc::new(catalog));
        Ok(())
    }

    /// Refreshes now, then every `interval`, until `cancel`; failures are logged and the last
    /// good catalog stays current.
    pub fn spawn_refresh(
        self: &Arc<Self>,
        client: Client,
        interval: Duration,
        cancel: CancellationToken,
    ) -> JoinHandle<()> {
        let cache = Arc::clone(self);
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(interval);
            ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    () = cancel.cancelled() => break,
                    _ = ticks.tick() => {}
                }
                tokio::select! {
                    () = cancel.cancelled() => break,
                    result = cache.refresh_once(&client) => {
                        if let Err(err) = result {
                            warn!(
                                region = %cache.region,
                                code = err.code(),
                                error = %err,
                                "instance catalog refresh failed; keeping the last good catalog"
                            );
                        }
                    }
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use aws_sdk_ec2::error::ErrorMetadata;
    use aws_sdk_ec2::operation::describe_instance_types::DescribeInstanceTypesError;
    use aws_sdk_ec2::types::{
        ArchitectureType, EbsInfo, EbsOptimizedInfo, EbsOptimizedSupport, EfaInfo,
        EphemeralNvmeSupport, GpuDeviceInfo, GpuDeviceMemoryInfo, GpuInfo, InstanceStorageInfo,
        InstanceType, InstanceTypeHypervisor, InstanceTypeInfo, MemoryInfo, NetworkCardInfo,
        NetworkInfo, NeuronDeviceCoreInfo, NeuronDeviceInfo, NeuronDeviceMemoryInfo, NeuronInfo,
        ProcessorInfo, VCpuInfo,
    };

    use super::*;

    /// g4ad.16xlarge as EC2 describes it, split across two GPU entries to check the sum.
    fn g4ad() -> aws_sdk_ec2::types::builders::InstanceTypeInfoBuilder {
        let gpu = |count| {
            GpuDeviceInfo::builder()
                .name("Radeon Pro V520")
                .manufacturer("AMD")
                .count(count)
                .build()
        };
        InstanceTypeInfo::builder()
            .instance_type(InstanceType::from("g4ad.16xlarge"))
            .current_generation(true)
            .bare_metal(false)
            .hypervisor(InstanceTypeHypervisor::Nitro)
            .supported_usage_classes(UsageClassType::OnDemand)
            .supported_usage_classes(UsageClassType::Spot)
            .processor_info(
                ProcessorInfo::builder()
                    .supported_architectures(ArchitectureType::X8664)
                    .build(),
            )
            .v_cpu_info(VCpuInfo::builder().default_v_cpus(64).build())
            .memory_info(MemoryInfo::builder().size_in_mib(262_144).build())
            .network_info(
                NetworkInfo::builder()
                    .maximum_network_interfaces(8)
                    .ipv4_addresses_per_interface(30)
                    .build(),
            )
            .gpu_info(
                GpuInfo::builder()
                    .gpus(gpu(3))
                    .gpus(gpu(1))
                    .total_gpu_memory_in_mib(32_768)
                    .build(),
            )
    }

    #[test]
    fn maps_a_described_type_into_facts() {
        let facts = type_facts(&g4ad().build()).unwrap();
        assert_eq!(facts.name, "g4ad.16xlarge");
        assert_eq!((facts.vcpus, facts.memory_mib), (64, 262_144));
        assert_eq!(facts.architectures, ["x86_64"]);
        assert_eq!((facts.gpus, facts.gpu_memory_mib), (4, 32_768));
        assert_eq!(facts.gpu_devices.len(), 2);
        assert_eq!(facts.gpu_devices[0].manufacturer, "AMD");
        assert_eq!(facts.max_pods_eni(), 8 * 29 + 2);
        assert_eq!(facts.hypervisor, "nitro");
        assert!(facts.spot && facts.current_generation && !facts.bare_metal);
        assert_eq!(facts.local_storage_gb, 0);
    }

    #[test]
    fn gpu_memory_is_summed_from_the_devices_when_the_total_is_missing() {
        let device = GpuDeviceInfo::builder()
            .manufacturer("NVIDIA")
            .count(8)
            .memory_info(GpuDeviceMemoryInfo::builder().size_in_mib(40_960).build())
            .build();
        let p4d = g4ad()
            .gpu_info(GpuInfo::builder().gpus(device).build())
            .build();
        let facts = type_facts(&p4d).unwrap();
        assert_eq!((facts.gpus, facts.gpu_memory_mib), (8, 327_680));
        assert_eq!(facts.gpu_devices[0].manufacturer, "NVIDIA");
        assert_eq!(facts.gpu_devices[0].memory_mib, 40_960);
    }

    /// trn1.32xlarge as AWS documents it: 16 Trainium devices of 2 NeuronCores, 8 network cards
    /// of 100 Gbps, up to 8 EFA interfaces, 4 × 1900 GB NVMe, Intel at 3.5 GHz, EBS-optimized by
    /// default at 80 Gbps.
    fn trn1() -> InstanceTypeInfo {
        let card = |index| {
            NetworkCardInfo::builder()
                .network_card_index(index)
                .baseline_bandwidth_in_gbps(100.0)
                .build()
        };
        let mut network = NetworkInfo::builder()
            .maximum_network_interfaces(40)
            .ipv4_addresses_per_interface(50)
            .encryption_in_transit_supported(true)
            .efa_info(EfaInfo::builder().maximum_efa_interfaces(8).build());
        for index in 0..8 {
            network = network.network_cards(card(index));
        }
        g4ad()
            .instance_type(InstanceType::from("trn1.32xlarge"))
            .set_gpu_info(None)
            .processor_info(
                ProcessorInfo::builder()
                    .supported_architectures(ArchitectureType::X8664)
                    .manufacturer("Intel")
                    .sustained_clock_speed_in_ghz(3.5)
                    .build(),
            )
            .network_info(network.build())
            .ebs_info(
                EbsInfo::builder()
                    .ebs_optimized_support(EbsOptimizedSupport::Default)
                    .ebs_optimized_info(
                        EbsOptimizedInfo::builder()
                            .maximum_bandwidth_in_mbps(80_000)
                            .build(),
                    )
                    .build(),
            )
            .instance_storage_info(
                InstanceStorageInfo::builder()
                    .total_size_in_gb(7600)
                    .nvme_support(EphemeralNvmeSupport::Required)
                    .build(),
            )
            .neuron_info(
                NeuronInfo::builder()
                    .neuron_devices(
                        NeuronDeviceInfo::builder()
                            .name("Trainium")
                            .count(16)
                            .core_info(NeuronDeviceCoreInfo::builder().count(2).build())
                            .memory_info(
                                NeuronDeviceMemoryInfo::builder()
                                    .size_in_mib(32_768)
                                    .build(),
                            )
                            .build(),
                    )
                    .build(),
            )
            .build()
    }

    #[test]
    fn karpenters_labels_and_devices_come_from_the_described_fields() {
        let facts = type_facts(&trn1()).unwrap();
        assert_eq!(facts.cpu_manufacturer.as_deref(), Some("Intel"));
        assert_eq!(facts.cpu_clock_mhz, Some(3500));
        assert_eq!(facts.network_baseline_mbps, Some(800_000));
        assert_eq!(facts.ebs_optimized_support.as_deref(), Some("default"));
        assert_eq!(facts.nvme_support.as_deref(), Some("required"));
        let hardware = facts.hardware();
        assert_eq!(hardware.cpu_manufacturer.as_deref(), Some("intel"));
        assert_eq!(hardware.ebs_bandwidth_mbps, Some(80_000));
        assert_eq!(hardware.network_bandwidth_mbps, Some(800_000));
        assert!(hardware.encryption_in_transit);
        assert_eq!(hardware.local_nvme_gb, Some(7600));
        assert_eq!(hardware.gpu, None);
        let accelerator = hardware.accelerator.unwrap();
        assert_eq!(
            (accelerator.name.as_str(), accelerator.manufacturer.as_str()),
            ("trainium", "aws")
        );
        assert_eq!(accelerator.count, 16);
        assert_eq!(
            (
                hardware.neuron_devices,
                hardware.neuron_cores,
                hardware.efa_interfaces
            ),
            (16, 32, 8)
        );
    }

    #[test]
    fn ebs_bandwidth_only_for_types_optimized_by_default_and_nvme_only_when_supported() {
        let info = trn1();
        let mut facts = type_facts(&info).unwrap();
        facts.ebs_optimized_support = Some("supported".into());
        facts.nvme_support = Some("unsupported".into());
        let hardware = facts.hardware();
        assert_eq!(hardware.ebs_bandwidth_mbps, None);
        assert_eq!(hardware.local_nvme_gb, None);
    }

    #[test]
    fn a_type_missing_what_scheduling_needs_is_skipped() {
        let no_memory = g4ad().set_memory_info(None).build();
        assert_eq!(type_facts(&no_memory), None);
        let no_enis = g4ad().network_info(NetworkInfo::builder().build()).build();
        assert_eq!(type_facts(&no_enis), None);
        let negative_vcpus = g4ad()
            .v_cpu_info(VCpuInfo::builder().default_v_cpus(-1).build())
            .build();
        assert_eq!(type_facts(&negative_vcpus), None);
        let no_name = g4ad().set_instance_type(None).build();
        assert_eq!(type_facts(&no_name), None);
    }

    #[test]
    fn service_errors_keep_the_call_and_ec2s_code_and_message() {
        let source = DescribeInstanceTypesError::generic(
            ErrorMetadata::builder()
                .code("UnauthorizedOperation")
                .message("You are not authorized to perform this operation.")
                .build(),
        );
        let err = Ec2Error::call("DescribeInstanceTypes", SdkError::service_error(source, ()));
        assert_eq!(err.code(), "UnauthorizedOperation");
        assert_eq!(
            err.to_string(),
            "EC2 DescribeInstanceTypes failed: UnauthorizedOperation: \
             You are not authorized to perform this operation."
        );
    }
}
