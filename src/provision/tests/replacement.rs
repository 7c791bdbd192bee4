//! Replacements an earlier leader wrote, against the fakes.

use super::*;

/// The claim a replacement claim was launched for.
fn replaces(claim: &NodeClaim) -> Option<&str> {
    claim
        .metadata
        .annotations
        .as_ref()?
        .get(super::super::replacement::REPLACES)
        .map(String::as_str)
}

#[tokio::test(start_paused = true)]
async fn a_new_leader_takes_over_the_replacement_an_earlier_leader_wrote_but_did_not_record() {
    let h = start(never_consolidate());
    let (old, node) = h.occupied_node().await;
    // The leader stops right after writing the replacement claim of the expired node: the
    // replacement is stored (Pending, not launched) and the old claim does not name it yet.
    h.leader.send(false).unwrap();
    h.run_for(Duration::from_secs(3)).await;
    // The old claim outlives expireAfter, its replacement will not before the test ends (claim
    // ages are wall-clock, in whole seconds).
    std::thread::sleep(Duration::from_millis(3100));
    let name = format!("{POOL}-earlier");
    let mut spec = old.spec.clone();
    spec.labels.insert(CLAIM_TAG.to_owned(), name.clone());
    let earlier = h
        .claims
        .create(&NodeClaim {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                labels: old.metadata.labels.clone(),
                annotations: Some(BTreeMap::from([(
                    super::super::replacement::REPLACES.to_owned(),
                    old.name().to_owned(),
                )])),
                finalizers: Some(vec![TERMINATION_FINALIZER.to_owned()]),
                ..Default::default()
            },
            spec,
            ..Default::default()
        })
        .await
        .unwrap();
    h.config.store(Arc::new(config_with(
        "{consolidationPolicy: WhenEmpty, consolidateAfter: Never}",
        "15m",
        "      expireAfter: 3s\n",
    )));

    // Another replica (here the same loop, which forgets what it knew) takes the lead.
    h.leader.send(true).unwrap();
    let claims = h
        .until("the old claim waiting for the earlier replacement", |cs| {
            cs.iter().any(|c| {
                c.name() == old.name()
                    && c.status
                        .as_ref()
                        .is_some_and(|s| s.replacements == [name.clone()])
            }) && cs
                .iter()
                .any(|c| c.name() == name && c.phase() == Phase::Launched)
        })
        .await;
    h.run_for(Duration::from_secs(5)).await;
    let replacing: Vec<&str> = claims
        .iter()
        .filter(|c| replaces(c) == Some(old.name()))
        .map(NodeClaim::name)
        .collect();
    assert_eq!(replacing, [name.as_str()], "{claims:#?}");
    assert_eq!(h.stored().await.len(), 2, "{:#?}", h.stored().await);
    assert_eq!(h.creates(), [old.name(), earlier.name()]);
    assert_eq!(h.decisions("expired", "disrupted"), 1);

    // The replacement registers: the old node goes, once.
    let launched = h
        .stored()
        .await
        .into_iter()
        .find(|c| c.name() == name)
        .unwrap();
    h.node_registers(&launched);
    h.until("the old claim gone", |cs| {
        cs.len() == 1 && cs[0].name() == name
    })
    .await;
    assert_eq!(h.deletes(), [vec![instance_of(&old)]]);
    assert_eq!(h.cluster.finalizers(&node), None);
    assert_eq!(h.creates().len(), 2);
}
