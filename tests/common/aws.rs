//! The EC2 side of the workshop in moto: a VPC with one subnet per zone and a security group,
//! both tagged `karpenter.sh/discovery: <cluster>`, and an EKS-named AL2023 AMI (what the
//! `al2023@latest` alias resolves to).
#![allow(dead_code)]

use std::collections::BTreeMap;

use aws_sdk_ec2::Client;
use aws_sdk_ec2::types::{Filter, ResourceType, Tag, TagSpecification};

pub const REGION: &str = "us-east-1";
pub const ZONES: [&str; 3] = ["us-east-1a", "us-east-1b", "us-east-1c"];
pub const EKS_AMI_NAME: &str = "amazon-eks-node-al2023-x86_64-standard-1.31-v20250101";

pub struct Network {
    pub vpc: String,
    /// zone → subnet id
    pub subnets: BTreeMap<String, String>,
    pub security_group: String,
    pub ami: String,
}

fn discovery(resource: ResourceType, cluster: &str) -> TagSpecification {
    TagSpecification::builder()
        .resource_type(resource)
        .tags(
            Tag::builder()
                .key("karpenter.sh/discovery")
                .value(cluster)
                .build(),
        )
        .build()
}

pub async fn workshop_network(client: &Client, cluster: &str) -> Network {
    let vpc = client
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
        let subnet = client
            .create_subnet()
            .vpc_id(&vpc)
            // /20: 4,091 addresses a zone, as EKS subnets are sized. moto answers a CreateFleet
            // into a full subnet with a 500 instead of EC2's InsufficientFreeAddressesInSubnet
            // (the race filled a /24 zone with 251 nodes).
            .cidr_block(format!("10.0.{}.0/20", i * 16))
            .availability_zone(*zone)
            .tag_specifications(discovery(ResourceType::Subnet, cluster))
            .send()
            .await
            .unwrap()
            .subnet
            .unwrap()
            .subnet_id
            .unwrap();
        subnets.insert((*zone).to_owned(), subnet);
    }
    let security_group = client
        .create_security_group()
        .group_name(format!("{cluster}-nodes"))
        .description("nodes")
        .vpc_id(&vpc)
        .tag_specifications(discovery(ResourceType::SecurityGroup, cluster))
        .send()
        .await
        .unwrap()
        .group_id
        .unwrap();
    // A copy of one of moto's preloaded x86_64 images, under an EKS AMI name.
    let source = client
        .describe_images()
        .owners("amazon")
        .filters(
            Filter::builder()
                .name("architecture")
                .values("x86_64")
                .build(),
        )
        .filters(Filter::builder().name("state").values("available").build())
        .send()
        .await
        .unwrap()
        .images()
        .iter()
        .find_map(|i| i.image_id().map(str::to_owned))
        .expect("moto preloads images");
    let ami = client
        .copy_image()
        .name(EKS_AMI_NAME)
        .source_image_id(source)
        .source_region(REGION)
        .send()
        .await
        .unwrap()
        .image_id
        .unwrap();
    Network {
        vpc,
        subnets,
        security_group,
        ami,
    }
}

/// Instances (pending or running) tagged for `cluster`: (id, type, zone, lifecycle, claim tag).
pub async fn cluster_instances(
    client: &Client,
    cluster: &str,
) -> Vec<(String, String, String, String, String)> {
    let out = client
        .describe_instances()
        .filters(
            Filter::builder()
                .name(format!("tag:kubernetes.io/cluster/{cluster}"))
                .values("owned")
                .build(),
        )
        .filters(
            Filter::builder()
                .name("instance-state-name")
                .values("pending")
                .values("running")
                .build(),
        )
        .send()
        .await
        .unwrap();
    let mut found = Vec::new();
    for r in out.reservations() {
        for i in r.instances() {
            let claim = i
                .tags()
                .iter()
                .find(|t| t.key() == Some("nodewright.io/nodeclaim"))
                .and_then(|t| t.value())
                .unwrap_or("")
                .to_owned();
            found.push((
                i.instance_id().unwrap_or("").to_owned(),
                i.instance_type()
                    .map(|t| t.as_str().to_owned())
                    .unwrap_or_default(),
                i.placement()
                    .and_then(|p| p.availability_zone())
                    .unwrap_or("")
                    .to_owned(),
                i.instance_lifecycle()
                    .map(|l| l.as_str().to_owned())
                    .unwrap_or_else(|| "on-demand".to_owned()),
                claim,
            ));
        }
    }
    found.sort();
    found
}

/// The EKS-named AMI [`workshop_network`] registered.
pub async fn workshop_network_ami(client: &Client) -> Option<String> {
    client
        .describe_images()
        .filters(Filter::builder().name("name").values(EKS_AMI_NAME).build())
        .send()
        .await
        .ok()?
        .images()
        .iter()
        .find_map(|i| i.image_id().map(str::to_owned))
}
