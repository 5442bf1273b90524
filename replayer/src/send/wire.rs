//! One connection to a target: bytes out, bytes in, and the protocol's own decoder over both
//! directions, so that replayed responses are normalized exactly like recorded ones.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use deetune_protocols::{new_decoder, DecoderConfig, Direction, Exchange, Protocol, StreamDecoder};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::target::{Resolved, Scheme};
use crate::SendError;

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

pub(crate) struct Wire {
    io: Box<dyn Io>,
    /// The plain TCP stream when there is no TLS layer (`io` is then this stream too): a
    /// request is first written with one non-blocking `send`, without a timer.
    plain: bool,
    decoder: Box<dyn StreamDecoder>,
    ready: VecDeque<Exchange>,
    scratch: Vec<Exchange>,
    buf: Vec<u8>,
    /// Bytes read but not yet consumed by `read_packet` (MySQL handshake).
    pending: Vec<u8>,
    timeout: Duration,
    pub(crate) eof: bool,
    peer: String,
}

fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

impl Wire {
    pub(crate) async fn connect(
        target: &Resolved,
        protocol: Protocol,
        timeout: Duration,
        tls: Option<&Arc<rustls::ClientConfig>>,
    ) -> Result<Self, SendError> {
        let t = &target.target;
        let peer = format!("{}:{}", t.host, t.port);
        if let Some(e) = &target.lookup_error {
            return Err(SendError::target(e.clone()));
        }
        let mut last = None;
        let mut tcp = None;
        for addr in &target.addrs {
            match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
                Ok(Ok(s)) => {
                    tcp = Some(s);
                    break;
                }
                Ok(Err(e)) => last = Some(format!("connect to {addr}: {e}")),
                Err(_) => last = Some(format!("connect to {addr}: timed out after {timeout:?}")),
            }
        }
        let tcp = tcp.ok_or_else(|| {
            SendError::target(last.unwrap_or_else(|| format!("no address for {peer}")))
        })?;
        let _ = tcp.set_nodelay(true);
        let plain = t.scheme != Scheme::Https;
        let io: Box<dyn Io> = match (t.scheme, tls) {
            (Scheme::Https, Some(cfg)) => {
                let name =
                    rustls::pki_types::ServerName::try_from(t.host.clone()).map_err(|e| {
                        SendError::target(format!("bad TLS server name {}: {e}", t.host))
                    })?;
                let conn = tokio_rustls::TlsConnector::from(Arc::clone(cfg));
                let s = tokio::time::timeout(timeout, conn.connect(name, tcp))
                    .await
                    .map_err(|_| SendError::target(format!("TLS handshake with {peer} timed out")))?
                    .map_err(|e| SendError::target(format!("TLS handshake with {peer}: {e}")))?;
                Box::new(s)
            }
            (Scheme::Https, None) => {
                return Err(SendError::internal("TLS is not available in this process"))
            }
            _ => Box::new(tcp),
        };
        let decoder = new_decoder(protocol, DecoderConfig::default())
            .ok_or_else(|| SendError::internal(format!("no decoder for {protocol}")))?;
        Ok(Self {
            io,
            plain,
            decoder,
            ready: VecDeque::new(),
            scratch: Vec::new(),
            buf: vec![0; 64 << 10],
            pending: Vec::new(),
            timeout,
            eof: false,
            peer,
        })
    }

    pub(crate) fn peer(&self) -> &str {
        &self.peer
    }

    /// Writes request bytes and shows them to the decoder.
    pub(crate) async fn send(&mut self, bytes: &[u8]) -> Result<(), SendError> {
        self.send_as(bytes, bytes).await
    }

    /// Writes `bytes` and shows the decoder `shown` in their place: a request that frames
    /// the response the same way (see [`Self::round_trip_as`]).
    async fn send_as(&mut self, bytes: &[u8], shown: &[u8]) -> Result<(), SendError> {
        self.decoder.push(Direction::Request, now_ns(), shown);
        let mut rest = bytes;
        if self.plain {
            // Almost always the whole request fits in the socket buffer: one `send`, no
            // timer. `poll_write` on a TCP stream never registers for more than readiness.
            let waker = std::task::Waker::noop();
            let mut cx = std::task::Context::from_waker(waker);
            match std::pin::Pin::new(&mut self.io).poll_write(&mut cx, rest) {
                std::task::Poll::Ready(Ok(n)) if n == rest.len() => return Ok(()),
                std::task::Poll::Ready(Ok(n)) => rest = &rest[n..],
                std::task::Poll::Ready(Err(e)) => {
                    self.eof = true;
                    return Err(SendError::target(format!("write to {}: {e}", self.peer)));
                }
                std::task::Poll::Pending => {}
            }
        }
        let res = tokio::time::timeout(self.timeout, async {
            self.io.write_all(rest).await?;
            self.io.flush().await
        })
        .await;
        match res {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => {
                self.eof = true;
                Err(SendError::target(format!("write to {}: {e}", self.peer)))
            }
            Err(_) => Err(SendError::target(format!(
                "write to {} timed out after {:?}",
                self.peer, self.timeout
            ))),
        }
    }

    async fn read_some(&mut self) -> Result<usize, SendError> {
        match tokio::time::timeout(self.timeout, self.io.read(&mut self.buf)).await {
            Ok(Ok(n)) => {
                if n == 0 {
                    self.eof = true;
                }
                Ok(n)
            }
            Ok(Err(e)) => {
                self.eof = true;
                Err(SendError::target(format!("read from {}: {e}", self.peer)))
            }
            Err(_) => Err(SendError::target(format!(
                "no response from {} within {:?}",
                self.peer, self.timeout
            ))),
        }
    }

    fn drain(&mut self) {
        self.decoder.drain(&mut self.scratch);
        self.ready.extend(self.scratch.drain(..));
    }

    /// The next exchange the decoder completes on this connection.
    pub(crate) async fn next_exchange(&mut self) -> Result<Exchange, SendError> {
        loop {
            if let Some(x) = self.ready.pop_front() {
                return Ok(x);
            }
            if self.eof {
                self.decoder.close(now_ns());
                self.drain();
                return self.ready.pop_front().ok_or_else(|| {
                    SendError::target(format!(
                        "{} closed the connection without a response",
                        self.peer
                    ))
                });
            }
            let n = self.read_some().await?;
            if n > 0 {
                self.decoder
                    .push(Direction::Response, now_ns(), &self.buf[..n]);
            }
            self.drain();
        }
    }

    /// Sends `bytes` and waits for the exchange, with the decoder shown `shown` as the
    /// request: HTTP replays only use the decoded response, and the HTTP decoder frames a
    /// response by its request's method alone (`HEAD`, `CONNECT`; and an `Upgrade` header,
    /// which the replayer never sends), so a bare request line with the same method decodes
    /// the response identically without parsing our own headers and body again.
    pub(crate) async fn round_trip_as(
        &mut self,
        bytes: &[u8],
        shown: &[u8],
    ) -> Result<Exchange, SendError> {
        self.send_as(bytes, shown).await?;
        self.next_exchange().await
    }

    /// Sends a request and waits for its exchange.
    pub(crate) async fn round_trip(&mut self, bytes: &[u8]) -> Result<Exchange, SendError> {
        self.send(bytes).await?;
        self.next_exchange().await
    }

    /// Drops exchanges the decoder completed that nobody waits for (handshakes).
    pub(crate) fn discard_ready(&mut self) {
        self.drain();
        self.ready.clear();
    }

    /// Reads one MySQL packet (header and payload), showing its bytes to the decoder;
    /// returns (sequence id, payload).
    pub(crate) async fn read_packet(&mut self) -> Result<(u8, Vec<u8>), SendError> {
        loop {
            if self.pending.len() >= 4 {
                let len = usize::from(self.pending[0])
                    | usize::from(self.pending[1]) << 8
                    | usize::from(self.pending[2]) << 16;
                if self.pending.len() >= 4 + len {
                    let seq = self.pending[3];
                    let packet: Vec<u8> = self.pending.drain(..4 + len).collect();
                    self.decoder.push(Direction::Response, now_ns(), &packet);
                    return Ok((seq, packet[4..].to_vec()));
                }
            }
            if self.eof {
                return Err(SendError::target(format!(
                    "{} closed the connection during the handshake",
                    self.peer
                )));
            }
            let n = self.read_some().await?;
            self.pending.extend_from_slice(&self.buf[..n]);
        }
    }
}

/// The TLS client configuration for https targets: the webpki roots plus the certificates
/// of `ca_certs` (PEM files); with `insecure`, any server certificate is accepted.
pub(crate) fn tls_config(
    insecure: bool,
    ca_certs: &[std::path::PathBuf],
) -> Result<Arc<rustls::ClientConfig>, crate::ReplayError> {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::CertificateDer;

    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    for path in ca_certs {
        let bad = |reason: String| crate::ReplayError::CaCert {
            path: path.clone(),
            reason,
        };
        let certs = CertificateDer::pem_file_iter(path)
            .map_err(|e| bad(e.to_string()))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad(e.to_string()))?;
        if certs.is_empty() {
            return Err(bad("no PEM certificate in it".to_owned()));
        }
        for cert in certs {
            roots.add(cert).map_err(|e| bad(e.to_string()))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| crate::ReplayError::Runtime(std::io::Error::other(e)))?;
    let config = if insecure {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
            .with_no_client_auth()
    } else {
        builder.with_root_certificates(roots).with_no_client_auth()
    };
    Ok(Arc::new(config))
}

/// `--insecure`: accepts any server certificate and name, but still checks that the server
/// holds the key of the certificate it sent (the handshake signatures).
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
