//! TLS set-up: rustls with the ring provider (no C build), installed once
//! per process before any HTTP client or AMQPS connection is made.

/// Installs the ring provider; a provider installed earlier is kept.
pub fn install_crypto_provider() {
    // An error only means one is installed already.
    let _ = rustls::crypto::ring::default_provider().install_default();
}
