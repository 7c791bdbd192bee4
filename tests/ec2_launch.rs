//! Launching NodeClaim instances with CreateFleet against moto (a real EC2 API emulator), through
//! [`Ec2Proxy`], which injects insufficient-capacity errors and throttling and logs every request.
//!
//! moto's CreateFleet (`instant`) launches the first override of the launch template config (it
//! sorts by `MaxPrice`, which nodewright never sets), applies the fleet's instance tags and the
//! launch template's image and user data, but ignores the template's security groups, instance
//! profile and IMDS options (those are checked on the launch template itself) and the
//! ClientToken (idempotence is checked through the claim tag).

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_ec2::Client;
use aws_sdk_ec2::config::retry::RetryConfig;
use aws_sdk_ec2::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_ec2::types::{
    Filter, InstanceAttributeName, InstanceLifecycleType, ResourceType, Tag, TagSpecification,
};
use base64::Engine as _;
use common::ec2proxy::Ec2Proxy;
use common::moto::Moto;
use nodewright::cloud::ec2::http_client;
use nodewright::cloud::launch::{
    Backoff, Bucket, ClusterInfo, LaunchError, LaunchOffering, LaunchRequest, Launcher, RateLimits,
    Unavailable,
};
use nodewright::cloud::userdata::parse_node_args;
use nodewright::config::EC2NodeClass;
use nodewright::model::catalog::CapacityType;
use nodewright::model::taints::{Taint, TaintEffect};

const REGION: &str = "us-east-1";
const CLUSTER: &str = "workshop";
const ZONES: [&str; 3] = ["us-east-1a", "us-east-1b", "us-east-1c"];
const EKS_AMI_NAME: &str = "amazon-eks-node-al2023-x86_64-standard-1.31-v20250101";
const ROLE: &str = "KarpenterNodeRole-workshop";

/// A client for `endpoint` with dummy credentials and the SDK's standard retries (3 attempts),
/// as the service builds it: the launcher must not let them multiply its own.
fn client_for(endpoint: &str) -> Client {
    let config = aws_sdk_ec2::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(REGION))
        .endpoint_url(endpoint)
        .credentials_provider(Credentials::new("testing", "testing", None, None, "tests"))
        .http_client(http_client())
        .retry_config(RetryConfig::standard())
        .build();
    Client::from_conf(config)
}

/// moto with a VPC, a subnet per zone and a security group tagged for discovery, and an
/// EKS-named AL2023 AMI; a proxy in front.
struct Env {
    moto: Moto,
    proxy: Ec2Proxy,
    /// Straight to moto, for checks that should not show in the proxy's log.
    direct: Client,
    subnets: BTreeMap<String, String>,
    security_group: String,
    ami: String,
}

fn discovery(resource: ResourceType) -> TagSpecification {
    TagSpecification::builder()
        .resource_type(resource)
        .tags(
            Tag::builder()
                .key("karpenter.sh/discovery")
                .value(CLUSTER)
                .build(),
        )
        .build()
}

async fn env() -> Env {
    let moto = Moto::start();
    let proxy = Ec2Proxy::start(&moto.endpoint).await;
    let direct = client_for(&moto.endpoint);
    let vpc = direct
        .create_vpc()
        .cidr_block("10.0.0.0/16")
        .send()
        .await
        .unwrap()
        .vpc
        .unwrap()
        .vpc_id
        .unwrap();
    let mut subnets = BTreeMap::new();
    for (i, zone) in ZONES.iter().enumerate() {
        let subnet = direct
            .create_subnet()
            .vpc_id(&vpc)
            .cidr_block(format!("10.0.{i}.0/24"))
            .availability_zone(*zone)
            .tag_specifications(discovery(ResourceType::Subnet))
            .send()
            .await
            .unwrap()
            .subnet
            .unwrap()
            .subnet_id
            .unwrap();
        subnets.insert((*zone).to_owned(), subnet);
    }
    let security_group = direct
        .create_security_group()
        .group_name("workshop-nodes")
        .description("nodes")
        .vpc_id(&vpc)
        .tag_specifications(discovery(ResourceType::SecurityGroup))
        .send()
        .await
        .unwrap()
        .group_id
        .unwrap();
    let ami = register_image(&direct, EKS_AMI_NAME, "x86_64").await;
    Env {
        moto,
        proxy,
        direct,
        subnets,
        security_group,
        ami,
    }
}

/// An AMI named `name`: a copy of one of moto's preloaded images of `arch` (moto's RegisterImage
/// leaves the architecture out, and real EC2 images always have one).
async fn register_image(client: &Client, name: &str, arch: &str) -> String {
    let source = client
        .describe_images()
        .owners("amazon")
        .filters(Filter::builder().name("architecture").values(arch).build())
        .filters(Filter::builder().name("state").values("available").build())
        .send()
        .await
        .unwrap()
        .images()
        .iter()
        .find_map(|i| i.image_id().map(str::to_owned))
        .expect("moto preloads images of every architecture");
    client
        .copy_image()
        .name(name)
        .source_image_id(source)
        .source_region(REGION)
        .send()
        .await
        .unwrap()
        .image_id
        .unwrap()
}

impl Env {
    fn launcher(&self) -> Launcher {
        Launcher::new(
            client_for(&self.proxy.endpoint),
            Unavailable::new(Duration::from_secs(180)),
        )
    }

    async fn instance(&self, id: &str) -> aws_sdk_ec2::types::Instance {
        self.direct
            .describe_instances()
            .instance_ids(id)
            .send()
            .await
            .unwrap()
            .reservations()[0]
            .instances()[0]
            .clone()
    }

    async fn user_data(&self, id: &str) -> String {
        let encoded = self
            .direct
            .describe_instance_attribute()
            .instance_id(id)
            .attribute(InstanceAttributeName::UserData)
            .send()
            .await
            .unwrap()
            .user_data
            .and_then(|u| u.value)
            .expect("user data");
        String::from_utf8(
            base64::engine::general_purpose::STANDARD
                .decode(encoded)
                .unwrap(),
        )
        .unwrap()
    }

    async fn launch_template_exists(&self, name: &str) -> bool {
        self.direct
            .describe_launch_templates()
            .filters(
                Filter::builder()
                    .name("launch-template-name")
                    .values(name)
                    .build(),
            )
            .send()
            .await
            .map(|out| !out.launch_templates().is_empty())
            .unwrap_or(false)
    }
}

fn node_class(spec: &str) -> Arc<EC2NodeClass> {
    let yaml = format!("metadata:\n  name: default\nspec:\n{spec}");
    Arc::new(serde_yaml::from_str(&yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}")))
}

const NODE_CLASS: &str = "  role: KarpenterNodeRole-workshop
  amiSelectorTerms:
  - alias: al2023@latest
  subnetSelectorTerms:
  - tags:
      karpenter.sh/discovery: workshop
  securityGroupSelectorTerms:
  - tags:
      karpenter.sh/discovery: workshop
  tags:
    team: platform
    Name: overridden-by-nodewright
";

fn offering(instance_type: &str, zone: &str, ct: CapacityType, price: f64) -> LaunchOffering {
    LaunchOffering {
        instance_type: instance_type.into(),
        zone: zone.into(),
        capacity_type: ct,
        price_per_hour: price,
    }
}

fn spot(instance_type: &str, zone: &str, price: f64) -> LaunchOffering {
    offering(instance_type, zone, CapacityType::Spot, price)
}

fn on_demand(instance_type: &str, zone: &str, price: f64) -> LaunchOffering {
    offering(instance_type, zone, CapacityType::OnDemand, price)
}

fn taints() -> Vec<Taint> {
    vec![Taint {
        key: "nodewright.io/pool".into(),
        value: Some("default".into()),
        effect: TaintEffect::NoSchedule,
    }]
}

/// A request of `claim` whose labels do not name the claim (so that claims share a template).
fn request(claim: &str, offerings: Vec<LaunchOffering>) -> LaunchRequest {
    LaunchRequest {
        claim_name: claim.into(),
        client_token: format!("0f8e2c0e-6d7a-4c55-9c1f-{:0>12}", claim.len()),
        node_pool: "default".into(),
        node_class: node_class(NODE_CLASS),
        cluster: ClusterInfo {
            name: CLUSTER.into(),
            endpoint: Some("https://ABCDEF.gr7.us-east-1.eks.amazonaws.com".into()),
            ca_bundle: Some("Y2EtYnVuZGxlCg==".into()),
            service_cidr: Some("10.100.0.0/16".into()),
        },
        offerings,
        labels: [
            ("karpenter.sh/nodepool", "default"),
            ("karpenter.sh/capacity-type", "spot"),
            ("team", "riker"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect(),
        taints: taints(),
        max_pods: None,
    }
}

fn tags_of(instance: &aws_sdk_ec2::types::Instance) -> BTreeMap<String, String> {
    instance
        .tags()
        .iter()
        .map(|t| {
            (
                t.key().unwrap_or_default().to_owned(),
                t.value().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

#[tokio::test]
async fn spot_launch_tags_the_instance_and_reuses_the_content_named_launch_template() {
    let env = env().await;
    let launcher = env.launcher();
    let req = request(
        "default-aaaaa",
        vec![
            spot("c7a.medium", "us-east-1b", 0.0180),
            spot("c7a.medium", "us-east-1a", 0.0181),
            spot("m7a.medium", "us-east-1a", 0.0210),
        ],
    );
    let launched = launcher
        .launch(&req)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", env.moto.logs()));
    assert!(!launched.reused);
    assert_eq!(launched.capacity_type, CapacityType::Spot);
    assert_eq!(
        (launched.instance_type.as_str(), launched.zone.as_str()),
        ("c7a.medium", "us-east-1b"),
        "moto launches the first (cheapest) override"
    );
    assert_eq!(
        launched.provider_id,
        format!("aws:///us-east-1b/{}", launched.instance_id)
    );
    assert!(launched.unavailable.is_empty());

    // The instance: in the zone's subnet, the alias's AMI, spot, every tag.
    let instance = env.instance(&launched.instance_id).await;
    assert_eq!(
        instance.subnet_id(),
        Some(env.subnets["us-east-1b"].as_str())
    );
    assert_eq!(
        instance.placement().and_then(|p| p.availability_zone()),
        Some("us-east-1b")
    );
    assert_eq!(instance.image_id(), Some(env.ami.as_str()));
    assert_eq!(
        instance.instance_lifecycle(),
        Some(&InstanceLifecycleType::Spot)
    );
    let tags = tags_of(&instance);
    for (k, v) in [
        ("karpenter.sh/nodepool", "default"),
        ("nodewright.io/nodeclaim", "default-aaaaa"),
        ("nodewright.io/ec2nodeclass", "default"),
        ("kubernetes.io/cluster/workshop", "owned"),
        ("Name", "default-aaaaa"),
        ("team", "platform"),
    ] {
        assert_eq!(tags.get(k).map(String::as_str), Some(v), "{k}: {tags:?}");
    }

    // The user data registers the node with the request's labels and taints.
    let user_data = env.user_data(&launched.instance_id).await;
    assert!(
        user_data.contains("Content-Type: application/node.eks.aws"),
        "{user_data}"
    );
    assert!(
        user_data.contains("apiServerEndpoint: https://ABCDEF.gr7.us-east-1.eks.amazonaws.com"),
        "{user_data}"
    );
    let (labels, registered_taints) = parse_node_args(&user_data);
    assert_eq!(labels, req.labels);
    assert_eq!(registered_taints, taints());

    // The CreateFleet request, as Karpenter makes it.
    let fleets = env.proxy.requests("CreateFleet");
    assert_eq!(fleets.len(), 1);
    let fleet = &fleets[0];
    assert_eq!(fleet.param("Type"), Some("instant"));
    assert_eq!(fleet.param("ClientToken"), Some(req.client_token.as_str()));
    assert_eq!(
        fleet.param("TargetCapacitySpecification.TotalTargetCapacity"),
        Some("1")
    );
    assert_eq!(
        fleet.param("TargetCapacitySpecification.DefaultTargetCapacityType"),
        Some("spot")
    );
    assert_eq!(
        fleet.param("SpotOptions.AllocationStrategy"),
        Some("price-capacity-optimized")
    );
    assert_eq!(
        fleet.params_like("LaunchTemplateConfigs.1.Overrides.", ".InstanceType"),
        ["c7a.medium", "c7a.medium", "m7a.medium"]
    );
    assert_eq!(
        fleet.params_like("LaunchTemplateConfigs.1.Overrides.", ".SubnetId"),
        [
            env.subnets["us-east-1b"].as_str(),
            env.subnets["us-east-1a"].as_str(),
            env.subnets["us-east-1a"].as_str()
        ]
    );
    assert_eq!(
        fleet.params_like("LaunchTemplateConfigs.1.Overrides.", ".ImageId"),
        [env.ami.as_str(); 3]
    );
    let mut resource_types = fleet.params_like("TagSpecification.", ".ResourceType");
    resource_types.sort();
    assert_eq!(resource_types, ["fleet", "instance", "volume"]);
    let template = fleet
        .param("LaunchTemplateConfigs.1.LaunchTemplateSpecification.LaunchTemplateName")
        .unwrap()
        .to_owned();
    assert!(
        template.starts_with("nodewright-")
            && template.len() == "nodewright-".len() + 16
            && template["nodewright-".len()..]
                .chars()
                .all(|c| c.is_ascii_hexdigit()),
        "{template}"
    );
    assert_eq!(
        fleet.param("LaunchTemplateConfigs.1.LaunchTemplateSpecification.Version"),
        Some("$Latest")
    );

    // The launch template holds the node configuration.
    let versions = env
        .direct
        .describe_launch_template_versions()
        .launch_template_name(&template)
        .send()
        .await
        .unwrap();
    let data = versions.launch_template_versions()[0]
        .launch_template_data()
        .unwrap();
    assert_eq!(data.image_id(), Some(env.ami.as_str()));
    assert_eq!(data.security_group_ids(), [env.security_group.as_str()]);
    assert_eq!(
        data.iam_instance_profile().and_then(|p| p.name()),
        Some(ROLE)
    );
    let metadata = data.metadata_options().unwrap();
    assert_eq!(metadata.http_tokens().map(|t| t.as_str()), Some("required"));
    assert_eq!(metadata.http_put_response_hop_limit(), Some(1));
    let root = &data.block_device_mappings()[0];
    assert_eq!(root.device_name(), Some("/dev/xvda"));
    let ebs = root.ebs().unwrap();
    assert_eq!(
        (
            ebs.volume_size(),
            ebs.encrypted(),
            ebs.volume_type().map(|v| v.as_str())
        ),
        (Some(20), Some(true), Some("gp3"))
    );

    // A second claim with the same node configuration reuses the template (and the resolved
    // node class): no second CreateLaunchTemplate, no second DescribeSubnets.
    let second = launcher
        .launch(&request("default-bbbbb", req.offerings.clone()))
        .await
        .unwrap();
    assert_ne!(second.instance_id, launched.instance_id);
    assert_eq!(env.proxy.count("CreateLaunchTemplate"), 1);
    assert_eq!(env.proxy.count("DescribeSubnets"), 1);
    assert_eq!(
        env.proxy.count("DescribeImages"),
        2,
        "one per alias architecture"
    );
    let fleets = env.proxy.requests("CreateFleet");
    assert_eq!(
        fleets[1].param("LaunchTemplateConfigs.1.LaunchTemplateSpecification.LaunchTemplateName"),
        Some(template.as_str())
    );

    // A new launcher (a restart) adopts the template by its tags: still no second create.
    let restarted = env.launcher();
    restarted
        .launch(&request("default-ccccc", req.offerings.clone()))
        .await
        .unwrap();
    assert_eq!(env.proxy.count("CreateLaunchTemplate"), 1);
    let fleets = env.proxy.requests("CreateFleet");
    assert_eq!(
        fleets[2].param("LaunchTemplateConfigs.1.LaunchTemplateSpecification.LaunchTemplateName"),
        Some(template.as_str())
    );
}

/// A template another process created after this one looked: CreateLaunchTemplate answers
/// `AlreadyExists`, DescribeLaunchTemplates confirms it, and it is used.
#[tokio::test]
async fn a_template_created_elsewhere_is_reused_after_already_exists() {
    let env = env().await;
    let offerings = vec![spot("c7a.medium", "us-east-1a", 0.018)];
    let b = env.launcher();
    let mut variant = request("default-b0", offerings.clone());
    variant.labels.insert("variant".into(), "b".into());
    b.launch(&variant).await.unwrap();
    let a = env.launcher();
    a.launch(&request("default-a0", offerings.clone()))
        .await
        .unwrap();
    b.launch(&request("default-b1", offerings.clone()))
        .await
        .unwrap();
    let statuses: Vec<u16> = env
        .proxy
        .requests("CreateLaunchTemplate")
        .iter()
        .map(|r| r.status)
        .collect();
    assert_eq!(statuses, [200, 200, 400]);
    let described = env.proxy.requests("DescribeLaunchTemplates");
    assert!(
        described
            .iter()
            .any(|d| d.param("LaunchTemplateName.1").is_some()),
        "{described:?}"
    );
    let names: Vec<String> = env
        .proxy
        .requests("CreateFleet")
        .iter()
        .map(|f| {
            f.param("LaunchTemplateConfigs.1.LaunchTemplateSpecification.LaunchTemplateName")
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(names[1], names[2]);
    assert_ne!(names[0], names[1]);
}

#[tokio::test]
async fn launching_the_same_claim_twice_returns_the_existing_instance() {
    let env = env().await;
    let launcher = env.launcher();
    let req = request(
        "default-twice",
        vec![spot("c7a.medium", "us-east-1a", 0.018)],
    );
    // Launches run on spawned tasks in the service: the future is Send and 'static with owned
    // inputs.
    let first = {
        let (launcher, req) = (launcher.clone(), req.clone());
        tokio::spawn(async move { launcher.launch(&req).await })
            .await
            .unwrap()
            .unwrap()
    };
    let again = launcher.launch(&req).await.unwrap();
    assert!(!first.reused);
    assert!(again.reused);
    assert_eq!(again.instance_id, first.instance_id);
    assert_eq!(again.provider_id, first.provider_id);
    assert_eq!(again.capacity_type, CapacityType::Spot);
    assert_eq!(env.proxy.count("CreateFleet"), 1);
    let instances = launcher.cluster_instances(CLUSTER).await.unwrap();
    assert_eq!(instances.len(), 1);
}

#[tokio::test]
async fn an_ice_on_the_cheapest_spot_type_launches_the_next_and_marks_the_offering() {
    let env = env().await;
    let launcher = env.launcher();
    env.proxy.out_of_capacity("c7a.medium", "spot");
    let req = request(
        "default-ice",
        vec![
            spot("c7a.medium", "us-east-1a", 0.018),
            spot("c7a.medium", "us-east-1b", 0.018),
            spot("m7a.medium", "us-east-1a", 0.021),
        ],
    );
    let launched = launcher.launch(&req).await.unwrap();
    assert_eq!(
        (launched.instance_type.as_str(), launched.zone.as_str()),
        ("m7a.medium", "us-east-1a")
    );
    assert_eq!(launched.capacity_type, CapacityType::Spot);
    assert_eq!(
        launched.unavailable,
        [
            (
                "c7a.medium".to_owned(),
                "us-east-1a".to_owned(),
                CapacityType::Spot
            ),
            (
                "c7a.medium".to_owned(),
                "us-east-1b".to_owned(),
                CapacityType::Spot
            ),
        ]
    );
    let cache = launcher.unavailable();
    assert!(cache.is_unavailable("c7a.medium", "us-east-1a", CapacityType::Spot));
    assert!(cache.is_unavailable("c7a.medium", "us-east-1b", CapacityType::Spot));
    assert!(!cache.is_unavailable("c7a.medium", "us-east-1a", CapacityType::OnDemand));
    assert!(!cache.is_unavailable("m7a.medium", "us-east-1a", CapacityType::Spot));
    // One CreateFleet: the answer held both the instance and the errors.
    assert_eq!(env.proxy.count("CreateFleet"), 1);

    // While marked, the offering is not asked for again.
    env.proxy.restore_capacity();
    let next = launcher
        .launch(&request("default-ice-2", req.offerings.clone()))
        .await
        .unwrap();
    assert_eq!(next.instance_type, "m7a.medium");
    let fleets = env.proxy.requests("CreateFleet");
    assert_eq!(
        fleets[1].params_like("LaunchTemplateConfigs.1.Overrides.", ".InstanceType"),
        ["m7a.medium"]
    );
}

/// 60 overrides all out of capacity: the launch goes on with the 61st offering in a second
/// CreateFleet of the same call, with a ClientToken of its own.
#[tokio::test]
async fn a_fully_failed_fleet_is_relaunched_with_the_remaining_offerings() {
    let env = env().await;
    let launcher = env.launcher();
    let sizes_7 = [
        "medium", "large", "xlarge", "2xlarge", "4xlarge", "8xlarge", "12xlarge", "16xlarge",
        "24xlarge", "32xlarge", "48xlarge",
    ];
    let sizes_6 = [
        "large", "xlarge", "2xlarge", "4xlarge", "8xlarge", "12xlarge", "16xlarge", "24xlarge",
        "32xlarge",
    ];
    let types: Vec<String> = sizes_7
        .iter()
        .map(|s| format!("c7a.{s}"))
        .chain(sizes_6.iter().map(|s| format!("c6a.{s}")))
        .collect();
    assert_eq!(types.len(), 20);
    let mut offerings = Vec::new();
    for (i, t) in types.iter().enumerate() {
        env.proxy.out_of_capacity(t, "spot");
        for zone in ZONES {
            offerings.push(spot(t, zone, 0.01 + i as f64 * 0.001));
        }
    }
    offerings.push(spot("m7a.medium", "us-east-1c", 0.5));
    let req = request("default-relaunch", offerings);
    let launched = launcher.launch(&req).await.unwrap();
    assert_eq!(
        (launched.instance_type.as_str(), launched.zone.as_str()),
        ("m7a.medium", "us-east-1c")
    );
    assert_eq!(launched.unavailable.len(), 60);
    let fleets = env.proxy.requests("CreateFleet");
    assert_eq!(fleets.len(), 2);
    assert_eq!(
        fleets[0]
            .params_like("LaunchTemplateConfigs.1.Overrides.", ".InstanceType")
            .len(),
        60,
        "at most 60 overrides"
    );
    assert_eq!(
        fleets[0].param("ClientToken"),
        Some(req.client_token.as_str())
    );
    let second_token = fleets[1].param("ClientToken").unwrap();
    assert!(
        second_token.starts_with(&format!("{}-", req.client_token)) && second_token.len() <= 64,
        "{second_token}"
    );
}

#[tokio::test]
async fn all_spot_out_of_capacity_falls_back_to_on_demand_in_the_same_call() {
    let env = env().await;
    let launcher = env.launcher();
    env.proxy.out_of_capacity("c7a.medium", "spot");
    env.proxy.out_of_capacity("m7a.medium", "spot");
    let req = request(
        "default-fallback",
        vec![
            spot("c7a.medium", "us-east-1a", 0.018),
            spot("m7a.medium", "us-east-1a", 0.021),
            on_demand("c7a.medium", "us-east-1b", 0.0514),
            on_demand("c7a.medium", "us-east-1c", 0.0514),
        ],
    );
    let launched = launcher.launch(&req).await.unwrap();
    assert_eq!(launched.capacity_type, CapacityType::OnDemand);
    assert_eq!(
        (launched.instance_type.as_str(), launched.zone.as_str()),
        ("c7a.medium", "us-east-1b")
    );
    assert_eq!(launched.unavailable.len(), 2);
    let instance = env.instance(&launched.instance_id).await;
    assert_eq!(instance.instance_lifecycle(), None, "on-demand");

    let fleets = env.proxy.requests("CreateFleet");
    assert_eq!(fleets.len(), 2);
    assert_eq!(
        fleets[0].param("TargetCapacitySpecification.DefaultTargetCapacityType"),
        Some("spot")
    );
    assert_eq!(
        fleets[1].param("TargetCapacitySpecification.DefaultTargetCapacityType"),
        Some("on-demand")
    );
    assert_eq!(
        fleets[1].param("OnDemandOptions.AllocationStrategy"),
        Some("lowest-price")
    );
    assert_eq!(
        fleets[1].params_like("LaunchTemplateConfigs.1.Overrides.", ".Priority"),
        ["0.0", "1.0"]
    );
    // The node registers as on-demand: another launch template.
    let (labels, _) = parse_node_args(&env.user_data(&launched.instance_id).await);
    assert_eq!(labels["karpenter.sh/capacity-type"], "on-demand");
    assert_eq!(env.proxy.count("CreateLaunchTemplate"), 2);
}

#[tokio::test]
async fn spot_only_and_all_out_of_capacity_is_insufficient_capacity() {
    let env = env().await;
    let launcher = env.launcher();
    env.proxy.out_of_capacity("c7a.medium", "spot");
    let req = request(
        "default-none",
        vec![
            spot("c7a.medium", "us-east-1a", 0.018),
            spot("c7a.medium", "us-east-1b", 0.018),
        ],
    );
    let err = launcher.launch(&req).await.unwrap_err();
    let LaunchError::InsufficientCapacity { message } = &err else {
        panic!("{err:?}");
    };
    assert!(
        message.contains("InsufficientInstanceCapacity"),
        "{message}"
    );
    assert!(
        message.contains("c7a.medium in us-east-1a (spot)"),
        "{message}"
    );
    assert_eq!(err.code(), "InsufficientCapacity");
    assert_eq!(env.proxy.count("CreateFleet"), 1);
    assert!(
        launcher
            .cluster_instances(CLUSTER)
            .await
            .unwrap()
            .is_empty()
    );

    // Marked unavailable: the next try fails without asking EC2.
    let err = launcher.launch(&req).await.unwrap_err();
    assert_eq!(err.code(), "InsufficientCapacity", "{err}");
    assert!(err.to_string().contains("marked unavailable"), "{err}");
    assert_eq!(env.proxy.count("CreateFleet"), 1);
}

#[tokio::test]
async fn request_limit_exceeded_on_create_fleet_is_retried_with_growing_backoff() {
    let env = env().await;
    let launcher = env.launcher().with_backoff(Backoff {
        jitter: false,
        ..Backoff::default()
    });
    env.proxy.throttle("CreateFleet", 3);
    let launched = launcher
        .launch(&request(
            "default-throttled",
            vec![spot("c7a.medium", "us-east-1a", 0.018)],
        ))
        .await
        .unwrap();
    assert!(!launched.reused);
    let fleets = env.proxy.requests("CreateFleet");
    let statuses: Vec<u16> = fleets.iter().map(|f| f.status).collect();
    assert_eq!(statuses, [503, 503, 503, 200], "3 retries, no more");
    let gaps: Vec<Duration> = fleets.windows(2).map(|w| w[1].at - w[0].at).collect();
    // Without jitter the waits are exactly 100, 200 and 400 ms: the floors show the doubling;
    // the generous ceiling only rules out a runaway wait (CI machines are noisy).
    for (i, (gap, floor)) in gaps.iter().zip([100u64, 200, 400]).enumerate() {
        assert!(
            *gap >= Duration::from_millis(floor) && *gap < Duration::from_millis(floor + 3000),
            "wait {i}: {gap:?} (all: {gaps:?})"
        );
    }
}

#[tokio::test]
async fn with_full_jitter_the_waits_stay_under_the_ceilings() {
    let env = env().await;
    let launcher = env.launcher();
    env.proxy.throttle("CreateFleet", 3);
    env.proxy.throttle("DescribeSubnets", 2);
    launcher
        .launch(&request(
            "default-jitter",
            vec![spot("c7a.medium", "us-east-1a", 0.018)],
        ))
        .await
        .unwrap();
    for (action, retries) in [("CreateFleet", 3), ("DescribeSubnets", 2)] {
        let requests = env.proxy.requests(action);
        assert_eq!(requests.len(), retries + 1, "{action}");
        for (i, w) in requests.windows(2).enumerate() {
            let ceiling = Backoff::default().ceiling(i as u32 + 1);
            let gap = w[1].at - w[0].at;
            assert!(
                gap < ceiling + Duration::from_millis(2500),
                "{action} wait {i}: {gap:?}"
            );
        }
    }
}

#[tokio::test]
async fn persistent_throttling_gives_up_after_bounded_attempts() {
    let env = env().await;
    let launcher = env.launcher().with_backoff(Backoff {
        base: Duration::from_millis(10),
        max_attempts: 4,
        ..Backoff::default()
    });
    env.proxy.throttle("CreateFleet", 1000);
    let err = launcher
        .launch(&request(
            "default-storm",
            vec![spot("c7a.medium", "us-east-1a", 0.018)],
        ))
        .await
        .unwrap_err();
    let LaunchError::Ec2 {
        call,
        code,
        message,
    } = &err
    else {
        panic!("{err:?}");
    };
    assert_eq!(
        (*call, code.as_str()),
        ("CreateFleet", "RequestLimitExceeded")
    );
    assert!(message.contains("gave up after 4 attempts"), "{message}");
    // The client's own standard retries (3 attempts) are off: exactly the launcher's 4.
    assert_eq!(env.proxy.count("CreateFleet"), 4);
    assert!(
        launcher
            .cluster_instances(CLUSTER)
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn node_class_problems_are_config_errors_that_say_what_is_wrong() {
    let env = env().await;
    let launcher = env.launcher();
    let offerings = vec![spot("c7a.medium", "us-east-1a", 0.018)];

    let mut req = request("default-nosubnet", offerings.clone());
    req.node_class = node_class(&NODE_CLASS.replace(
        "  subnetSelectorTerms:\n  - tags:\n      karpenter.sh/discovery: workshop",
        "  subnetSelectorTerms:\n  - tags:\n      karpenter.sh/discovery: elsewhere",
    ));
    let err = launcher.launch(&req).await.unwrap_err();
    assert!(matches!(err, LaunchError::Config(_)), "{err:?}");
    assert_eq!(err.code(), "InvalidNodeClass");
    let text = err.to_string();
    assert!(
        text.contains("no subnet matches the subnetSelectorTerms of EC2NodeClass default")
            && text.contains("elsewhere"),
        "{text}"
    );

    // An alias without an image of that name.
    let mut req = request("default-noami", offerings.clone());
    req.node_class = node_class(&NODE_CLASS.replace("al2023@latest", "al2@latest"));
    let text = launcher.launch(&req).await.unwrap_err().to_string();
    assert!(
        text.contains("alias al2@latest")
            && text.contains("amazon-eks-node-1.*")
            && text.contains("not SSM"),
        "{text}"
    );

    // Offerings only in a zone without a selected subnet.
    let req = request(
        "default-nozone",
        vec![spot("c7a.medium", "us-east-1d", 0.018)],
    );
    let text = launcher.launch(&req).await.unwrap_err().to_string();
    assert!(
        text.contains("no selected subnet in zone(s) us-east-1d"),
        "{text}"
    );

    // An arm64 type with only an x86_64 AMI.
    let req = request(
        "default-noarch",
        vec![spot("m7g.medium", "us-east-1a", 0.018)],
    );
    let text = launcher.launch(&req).await.unwrap_err().to_string();
    assert!(
        text.contains("no AMI for the architecture of m7g.medium (arm64)"),
        "{text}"
    );

    // No role, no instance profile.
    let mut req = request("default-norole", offerings.clone());
    req.node_class = node_class(&NODE_CLASS.replace("  role: KarpenterNodeRole-workshop\n", ""));
    let text = launcher.launch(&req).await.unwrap_err().to_string();
    assert!(text.contains("neither instanceProfile nor role"), "{text}");

    assert_eq!(env.proxy.count("CreateFleet"), 0);
}

#[tokio::test]
async fn an_ami_selected_by_id_and_custom_user_data_are_used() {
    let env = env().await;
    let launcher = env.launcher();
    let custom_ami = register_image(&env.direct, "my-golden-node", "x86_64").await;
    let mut req = request(
        "default-custom",
        vec![spot("c7a.medium", "us-east-1c", 0.018)],
    );
    req.node_class = node_class(&format!(
        "{}  amiFamily: AL2\n  userData: |\n    #!/bin/bash\n    echo hello > /etc/motd\n  metadataOptions:\n    httpTokens: optional\n    httpPutResponseHopLimit: 2\n  blockDeviceMappings:\n  - deviceName: /dev/xvdb\n    rootVolume: true\n    ebs:\n      volumeSize: 100Gi\n      volumeType: gp3\n",
        NODE_CLASS.replace("  - alias: al2023@latest", &format!("  - id: {custom_ami}"))
    ));
    req.max_pods = Some(58);
    let launched = launcher.launch(&req).await.unwrap();
    let instance = env.instance(&launched.instance_id).await;
    assert_eq!(instance.image_id(), Some(custom_ami.as_str()));
    let user_data = env.user_data(&launched.instance_id).await;
    assert!(user_data.contains("echo hello > /etc/motd"), "{user_data}");
    assert!(
        user_data.contains("/etc/eks/bootstrap.sh 'workshop'"),
        "{user_data}"
    );
    assert!(user_data.contains("--max-pods=58"), "{user_data}");
    let (labels, taints_back) = parse_node_args(&user_data);
    assert_eq!(labels, req.labels);
    assert_eq!(taints_back, taints());

    let template = env.proxy.requests("CreateFleet")[0]
        .param("LaunchTemplateConfigs.1.LaunchTemplateSpecification.LaunchTemplateName")
        .unwrap()
        .to_owned();
    let versions = env
        .direct
        .describe_launch_template_versions()
        .launch_template_name(&template)
        .send()
        .await
        .unwrap();
    let data = versions.launch_template_versions()[0]
        .launch_template_data()
        .unwrap();
    let metadata = data.metadata_options().unwrap();
    assert_eq!(metadata.http_tokens().map(|t| t.as_str()), Some("optional"));
    assert_eq!(metadata.http_put_response_hop_limit(), Some(2));
    let device = &data.block_device_mappings()[0];
    assert_eq!(device.device_name(), Some("/dev/xvdb"));
    assert_eq!(device.ebs().and_then(|e| e.volume_size()), Some(100));
}

#[tokio::test]
async fn terminate_cluster_instances_and_find_by_claim() {
    let env = env().await;
    let launcher = env.launcher();
    let a = launcher
        .launch(&request(
            "default-a",
            vec![spot("c7a.medium", "us-east-1a", 0.018)],
        ))
        .await
        .unwrap();
    let b = launcher
        .launch(&request(
            "default-b",
            vec![on_demand("m7a.medium", "us-east-1b", 0.058)],
        ))
        .await
        .unwrap();
    // An instance of another cluster is never listed.
    let mut other = request("other-a", vec![spot("c7a.medium", "us-east-1a", 0.018)]);
    other.cluster.name = "other".into();
    let foreign = launcher.launch(&other).await.unwrap();

    let instances = launcher.cluster_instances(CLUSTER).await.unwrap();
    let mut ids: Vec<&str> = instances.iter().map(|i| i.instance_id.as_str()).collect();
    ids.sort();
    let mut expected = vec![a.instance_id.as_str(), b.instance_id.as_str()];
    expected.sort();
    assert_eq!(ids, expected);
    let info_b = instances
        .iter()
        .find(|i| i.instance_id == b.instance_id)
        .unwrap();
    assert_eq!(info_b.claim.as_deref(), Some("default-b"));
    assert_eq!(info_b.node_pool.as_deref(), Some("default"));
    assert_eq!(info_b.state, "running");
    assert_eq!(info_b.capacity_type, CapacityType::OnDemand);
    assert_eq!(info_b.instance_type, "m7a.medium");
    assert_eq!(info_b.provider_id, b.provider_id);
    assert!(info_b.launch_time.is_some());

    let found = launcher
        .find_by_claim(CLUSTER, "default-a")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(found.instance_id, a.instance_id);
    assert_eq!(found.capacity_type, CapacityType::Spot);
    assert!(
        launcher
            .find_by_claim(CLUSTER, "default-zzz")
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        launcher
            .find_by_claim("other", "default-a")
            .await
            .unwrap()
            .is_none()
    );

    // Terminate one, with an id EC2 does not know: the unknown one is taken as gone.
    launcher
        .terminate(&[a.instance_id.clone(), "i-0123456789abcdef0".into()])
        .await
        .unwrap();
    launcher.terminate(&[]).await.unwrap();
    let left = launcher.cluster_instances(CLUSTER).await.unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].instance_id, b.instance_id);
    assert!(
        launcher
            .find_by_claim(CLUSTER, "default-a")
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(
        launcher.cluster_instances("other").await.unwrap()[0].instance_id,
        foreign.instance_id
    );

    // A terminated claim launches anew.
    let again = launcher
        .launch(&request(
            "default-a",
            vec![spot("c7a.medium", "us-east-1a", 0.018)],
        ))
        .await
        .unwrap();
    assert!(!again.reused);
    assert_ne!(again.instance_id, a.instance_id);
}

/// Labels naming the claim make a template per claim; idle ones are deleted, including those an
/// earlier process left.
#[tokio::test]
async fn idle_launch_templates_are_deleted() {
    let env = env().await;
    let launcher = env.launcher().with_template_idle_ttl(Duration::ZERO);
    let with_claim_label = |claim: &str| {
        let mut req = request(claim, vec![spot("c7a.medium", "us-east-1a", 0.018)]);
        req.labels
            .insert("nodewright.io/nodeclaim".into(), claim.into());
        req
    };
    launcher
        .launch(&with_claim_label("default-lt1"))
        .await
        .unwrap();
    launcher
        .launch(&with_claim_label("default-lt2"))
        .await
        .unwrap();
    let names: Vec<String> = env
        .proxy
        .requests("CreateFleet")
        .iter()
        .map(|f| {
            f.param("LaunchTemplateConfigs.1.LaunchTemplateSpecification.LaunchTemplateName")
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_ne!(names[0], names[1]);
    assert!(
        !env.launch_template_exists(&names[0]).await,
        "idle template deleted"
    );
    assert!(env.launch_template_exists(&names[1]).await);

    // A new process adopts the leftover template by its tags and deletes it when idle.
    let restarted = env.launcher().with_template_idle_ttl(Duration::ZERO);
    restarted
        .launch(&with_claim_label("default-lt3"))
        .await
        .unwrap();
    assert!(
        !env.launch_template_exists(&names[1]).await,
        "leftover template deleted"
    );
}

/// An alias resolves an AMI per architecture; a fleet mixing x86_64 and arm64 types gets a
/// launch template per AMI and each override the AMI of its type.
#[tokio::test]
async fn mixed_architectures_get_a_launch_template_per_ami() {
    let env = env().await;
    let arm = register_image(
        &env.direct,
        "amazon-eks-node-al2023-arm64-standard-1.31-v20250101",
        "arm64",
    )
    .await;
    let launcher = env.launcher();
    let launched = launcher
        .launch(&request(
            "default-arm",
            vec![
                spot("m7g.medium", "us-east-1a", 0.015),
                spot("c7a.medium", "us-east-1a", 0.018),
            ],
        ))
        .await
        .unwrap();
    assert_eq!(launched.instance_type, "m7g.medium");
    let instance = env.instance(&launched.instance_id).await;
    assert_eq!(instance.image_id(), Some(arm.as_str()));
    let fleet = &env.proxy.requests("CreateFleet")[0];
    assert_eq!(
        fleet.params_like("LaunchTemplateConfigs.1.Overrides.", ".InstanceType"),
        ["m7g.medium"]
    );
    assert_eq!(
        fleet.params_like("LaunchTemplateConfigs.1.Overrides.", ".ImageId"),
        [arm.as_str()]
    );
    assert_eq!(
        fleet.params_like("LaunchTemplateConfigs.2.Overrides.", ".ImageId"),
        [env.ami.as_str()]
    );
    assert_eq!(env.proxy.count("CreateLaunchTemplate"), 2);
    assert_eq!(env.proxy.count("DescribeInstanceTypes"), 1);
}

#[tokio::test]
async fn other_create_fleet_errors_name_the_call_and_code_and_are_not_retried() {
    let env = env().await;
    let launcher = env.launcher();
    env.proxy
        .fail("CreateFleet", 400, "UnauthorizedOperation", 1);
    let err = launcher
        .launch(&request(
            "default-denied",
            vec![spot("c7a.medium", "us-east-1a", 0.018)],
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), "UnauthorizedOperation");
    assert!(
        err.to_string()
            .starts_with("EC2 CreateFleet failed: UnauthorizedOperation: "),
        "{err}"
    );
    assert_eq!(env.proxy.count("CreateFleet"), 1);
}

/// EC2 refuses the claim's ClientToken (an earlier process used it with other parameters): the
/// launcher looks for the claim's instance again, then launches with a token of its own.
#[tokio::test]
async fn a_clashing_client_token_is_checked_then_replaced() {
    let env = env().await;
    let launcher = env.launcher();
    env.proxy
        .fail("CreateFleet", 400, "IdempotentParameterMismatch", 1);
    let req = request(
        "default-clash",
        vec![spot("c7a.medium", "us-east-1a", 0.018)],
    );
    let launched = launcher.launch(&req).await.unwrap();
    assert!(!launched.reused);
    let fleets = env.proxy.requests("CreateFleet");
    assert_eq!(fleets.len(), 2);
    assert_eq!(
        fleets[0].param("ClientToken"),
        Some(req.client_token.as_str())
    );
    assert!(
        fleets[1]
            .param("ClientToken")
            .unwrap()
            .starts_with(&format!("{}-", req.client_token))
    );
    assert_eq!(
        env.proxy.count("DescribeInstances"),
        4,
        "the first look and three more"
    );
}

/// A launch template deleted behind the launcher's back is recreated and the fleet retried once.
#[tokio::test]
async fn a_launch_template_deleted_elsewhere_is_recreated() {
    let env = env().await;
    let launcher = env.launcher();
    let offerings = vec![spot("c7a.medium", "us-east-1a", 0.018)];
    launcher
        .launch(&request("default-lt-a", offerings.clone()))
        .await
        .unwrap();
    let template = env.proxy.requests("CreateFleet")[0]
        .param("LaunchTemplateConfigs.1.LaunchTemplateSpecification.LaunchTemplateName")
        .unwrap()
        .to_owned();
    env.direct
        .delete_launch_template()
        .launch_template_name(&template)
        .send()
        .await
        .unwrap();
    launcher
        .launch(&request("default-lt-b", offerings))
        .await
        .unwrap();
    let statuses: Vec<u16> = env
        .proxy
        .requests("CreateFleet")
        .iter()
        .map(|f| f.status)
        .collect();
    assert_eq!(statuses, [200, 400, 200]);
    assert_eq!(env.proxy.count("CreateLaunchTemplate"), 2);
    assert!(env.launch_template_exists(&template).await);
}

/// The client-side bucket paces calls: with one Describe token refilled at 5/s, the Describe
/// calls of a launch are at least 200 ms apart.
#[tokio::test]
async fn describe_calls_are_paced_by_the_client_side_bucket() {
    let env = env().await;
    let launcher = env.launcher().with_rate_limits(RateLimits {
        non_mutating: Bucket {
            capacity: 1.0,
            refill_per_second: 5.0,
        },
        ..RateLimits::default()
    });
    launcher
        .launch(&request(
            "default-paced",
            vec![spot("c7a.medium", "us-east-1a", 0.018)],
        ))
        .await
        .unwrap();
    let describes: Vec<_> = env
        .proxy
        .log()
        .into_iter()
        .filter(|l| l.action.starts_with("Describe"))
        .collect();
    assert!(describes.len() >= 6, "{:?}", env.proxy.actions());
    for w in describes.windows(2) {
        let gap = w[1].at - w[0].at;
        assert!(
            gap >= Duration::from_millis(180),
            "{} → {}: {gap:?}",
            w[0].action,
            w[1].action
        );
    }
}

#[tokio::test]
async fn a_launch_reports_what_it_launched_with_and_the_drift_view_follows_a_newer_ami() {
    let env = env().await;
    let arm = register_image(
        &env.direct,
        "amazon-eks-node-al2023-arm64-standard-1.31-v20250101",
        "arm64",
    )
    .await;
    let launcher = env.launcher().with_resolve_ttl(Duration::from_secs(2));
    let launched = launcher
        .launch(&request(
            "default-drift",
            vec![spot("m7g.medium", "us-east-1b", 0.015)],
        ))
        .await
        .unwrap();
    assert_eq!(launched.image_id.as_deref(), Some(arm.as_str()));
    assert_eq!(
        launched.subnet_id.as_deref(),
        Some(env.subnets["us-east-1b"].as_str())
    );
    assert_eq!(launched.security_group_ids, [env.security_group.as_str()]);
    let instance = env.instance(&launched.instance_id).await;
    assert_eq!(instance.image_id(), launched.image_id.as_deref());
    assert_eq!(instance.subnet_id(), launched.subnet_id.as_deref());
    // Found again (a retry): what EC2 describes.
    let again = launcher
        .launch(&request(
            "default-drift",
            vec![spot("m7g.medium", "us-east-1b", 0.015)],
        ))
        .await
        .unwrap();
    assert!(again.reused);
    assert_eq!(
        (&again.image_id, &again.subnet_id),
        (&launched.image_id, &launched.subnet_id)
    );

    let class = node_class(NODE_CLASS);
    let types = ["m7g.medium".to_owned(), "c7a.medium".to_owned()];
    let view = launcher.node_class_view(&class, &types).await.unwrap();
    assert_eq!(view.amis_for("m7g.medium"), [arm.as_str()]);
    assert_eq!(view.amis_for("c7a.medium"), [env.ami.as_str()]);
    let mut subnets: Vec<String> = env.subnets.values().cloned().collect();
    subnets.sort();
    assert_eq!(view.subnets, subnets);
    assert_eq!(view.security_groups, [env.security_group.as_str()]);
    let images = env.proxy.count("DescribeImages");
    assert_eq!(
        images, 2,
        "resolved once (two alias queries), for the launch"
    );

    // A newer arm64 AMI (a second later: creation dates have whole seconds).
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let newer = register_image(
        &env.direct,
        "amazon-eks-node-al2023-arm64-standard-1.31-v20250201",
        "arm64",
    )
    .await;
    let cached = launcher.node_class_view(&class, &types).await.unwrap();
    assert_eq!(cached.amis_for("m7g.medium"), [arm], "within the TTL");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let fresh = launcher.node_class_view(&class, &types).await.unwrap();
    assert_eq!(fresh.amis_for("m7g.medium"), [newer]);
    assert_eq!(fresh.amis_for("c7a.medium"), [env.ami.as_str()]);
    assert_eq!(env.proxy.count("DescribeImages"), images + 2);
}
