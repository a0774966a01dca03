//! The starters give services that serve, side by side, each on its own port and database.

#[tokio::test]
async fn identity_catalog_and_inventory_start_side_by_side() {
    let (identity, catalog, inventory) = tokio::join!(
        omni_testkit::identity(),
        omni_testkit::catalog(),
        omni_testkit::inventory()
    );
    let services = [
        identity.expect("identity"),
        catalog.expect("catalog"),
        inventory.expect("inventory"),
    ];
    let mut ports: Vec<u16> = services.iter().map(|s| s.addr.port()).collect();
    ports.sort_unstable();
    ports.dedup();
    assert_eq!(ports.len(), 3);
    assert_ne!(
        services[0].config.database_url,
        services[1].config.database_url
    );
    for service in services {
        service.stop().await.expect("stops cleanly");
    }
}
