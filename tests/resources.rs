//! The gateway gives back what connections took: after many sequential and concurrent
//! connections, its open file descriptors and threads are where they started.

mod common;

use std::time::Duration;

use common::*;

on_both_drivers!(fds_and_threads_return_to_baseline_after_many_connections);

fn fds_and_threads_return_to_baseline_after_many_connections(driver: Driver) {
    let (pki, backend, gateway) = start_mtls(driver);
    // The start-up probe's connection must be gone before the baseline is taken.
    let idle = || gateway.metric("srrrs_connections_open") == 0.0;
    assert!(eventually(Duration::from_secs(10), idle));
    // An admin scrape's socket may still be closing: the baseline is a reading that
    // holds still across two looks.
    let reading = || (gateway.open_fds(), gateway.threads());
    let mut baseline = reading();
    assert!(eventually(Duration::from_secs(10), || {
        std::thread::sleep(Duration::from_millis(100));
        let now = reading();
        std::mem::replace(&mut baseline, now) == now
    }));
    let (fds, threads) = baseline;
    let before = gateway.holdings();

    let client = Client::new(&pki, Some(&pki.good));
    for _ in 0..1000 {
        let response = client.get(gateway.addr, "/sequential").expect("admitted");
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    }

    let concurrent: Vec<_> = (0..200)
        .map(|index| {
            let client = client.clone();
            let addr = gateway.addr;
            std::thread::spawn(move || {
                // Half finish a request, half hang up right after the handshake.
                let mut stream = client.connect(addr).expect("handshake");
                if index % 2 == 0 {
                    send_request(&mut stream, "/concurrent", &[("connection", "close")])
                        .expect("send");
                    read_to_end(&mut stream).expect("response")
                } else {
                    String::new()
                }
            })
        })
        .collect();
    for handle in concurrent {
        handle.join().expect("client thread");
    }
    assert_eq!(backend.received().len(), 1100);

    // Each scrape of /metrics runs on an admin thread of its own: the fds and threads are
    // read apart from the scrapes, once that thread has had time to end.
    let settled = eventually(Duration::from_secs(20), idle)
        && eventually(Duration::from_secs(20), || {
            std::thread::sleep(Duration::from_millis(100));
            gateway.open_fds() == fds && gateway.threads() == threads
        });
    assert!(
        settled,
        "fds {} -> {}, threads {} -> {}\nbefore: {before}\nafter: {}",
        fds,
        gateway.open_fds(),
        threads,
        gateway.threads(),
        gateway.holdings()
    );
}
