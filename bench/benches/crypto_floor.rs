//! The crypto floor of one full mTLS handshake (TLS 1.3, P-256 certificates with one
//! intermediate): the raw aws-lc-rs primitives it cannot avoid. X25519 (an ephemeral key
//! and the shared secret), one P-256 signature (the server's CertificateVerify), and
//! three P-256 verifications (the leaf's and the intermediate's certificate signatures,
//! and the client's CertificateVerify). The gateway's CPU per handshake is stated as a
//! multiple of their sum.
//!
//! Run with `cargo bench -p srrrs-edge-bench --bench crypto_floor`.

use std::hint::black_box;

use aws_lc_rs::agreement::{self, EphemeralPrivateKey, UnparsedPublicKey as PeerKey, X25519};
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{
    EcdsaKeyPair, KeyPair, UnparsedPublicKey, ECDSA_P256_SHA256_ASN1,
    ECDSA_P256_SHA256_ASN1_SIGNING,
};
use criterion::{criterion_group, criterion_main, Criterion};

/// What a TLS 1.3 CertificateVerify signs: 64 spaces, a context string, a zero byte and
/// the transcript hash.
fn certificate_verify_message() -> Vec<u8> {
    let mut message = vec![0x20; 64];
    message.extend_from_slice(b"TLS 1.3, server CertificateVerify\0");
    message.extend_from_slice(&[0xab; 32]);
    message
}

fn floor(c: &mut Criterion) {
    let random = SystemRandom::new();
    let peer = EphemeralPrivateKey::generate(&X25519, &random).unwrap();
    let peer_public = peer.compute_public_key().unwrap().as_ref().to_vec();

    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &random).unwrap();
    let signer = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref()).unwrap();
    let message = certificate_verify_message();
    let signature = signer.sign(&random, &message).unwrap();
    let verifier = UnparsedPublicKey::new(
        &ECDSA_P256_SHA256_ASN1,
        signer.public_key().as_ref().to_vec(),
    );

    let mut group = c.benchmark_group("crypto_floor");
    group.bench_function("x25519_keygen_and_agree", |b| {
        b.iter(|| {
            let mine = EphemeralPrivateKey::generate(&X25519, &random).unwrap();
            let public = mine.compute_public_key().unwrap();
            let secret =
                agreement::agree_ephemeral(mine, PeerKey::new(&X25519, &peer_public), (), |key| {
                    Ok(key[0])
                });
            black_box((public, secret))
        })
    });
    group.bench_function("p256_sign", |b| {
        b.iter(|| signer.sign(&random, black_box(&message)).unwrap())
    });
    group.bench_function("p256_verify", |b| {
        b.iter(|| {
            verifier
                .verify(black_box(&message), signature.as_ref())
                .unwrap()
        })
    });
    group.finish();
}

criterion_group!(benches, floor);
criterion_main!(benches);
