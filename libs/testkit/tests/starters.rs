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

/// A URL naming a host, or several replicas, gives a channel that balances over what it
/// resolves to and reaches the services (the headless-Service path of outgoing clients).
#[tokio::test]
async fn a_channel_by_host_name_or_replica_list_reaches_the_service() {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;
    let (a, b) = tokio::join!(omni_testkit::identity(), omni_testkit::identity());
    let (a, b) = (a.expect("a"), b.expect("b"));
    let timeout = std::time::Duration::from_secs(5);
    for url in [
        format!("http://localhost:{}", a.addr.port()),
        format!("{},{}", a.url(), b.url()),
        format!("http://localhost:{},{}", a.addr.port(), b.url()),
    ] {
        let channel = omni_runtime::client::channel(&url, timeout, timeout).expect("channel");
        let mut health = HealthClient::new(channel);
        for _ in 0..4 {
            let status = health
                .check(HealthCheckRequest {
                    service: String::new(),
                })
                .await
                .unwrap_or_else(|e| panic!("{url}: {e:?}"));
            assert_eq!(status.into_inner().status, 1, "{url} serving");
        }
    }
}
