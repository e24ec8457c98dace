//! Makes a throwaway certificate authority, a server certificate for `localhost` and
//! `127.0.0.1`, and client certificates, for the TLS tests (Rust, Python and Node alike):
//! no private key is ever committed.
//!
//! ```text
//! junction-test-certs DIR [CLIENT_NAME ...]
//! ```
//!
//! Writes `ca.pem`, `server.pem`, `server.key`, and for each client name `NAME.pem` and
//! `NAME.key`, whose subject's common name and `dns`/`email` alternative names carry the
//! name (`NAME`, `NAME.clients.test`, `NAME@clients.test`).

use std::path::PathBuf;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let dir = PathBuf::from(
        args.next()
            .ok_or("usage: junction-test-certs DIR [CLIENT ...]")?,
    );
    std::fs::create_dir_all(&dir)?;

    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.distinguished_name = name("Junction test CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca.self_signed(&ca_key)?;
    std::fs::write(dir.join("ca.pem"), ca_cert.pem())?;
    let issuer = Issuer::new(ca, ca_key);

    let server_key = KeyPair::generate()?;
    let mut server = CertificateParams::new(vec!["localhost".to_owned()])?;
    server
        .subject_alt_names
        .push(SanType::IpAddress([127, 0, 0, 1].into()));
    server.distinguished_name = name("localhost");
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let server_cert = server.signed_by(&server_key, &issuer)?;
    std::fs::write(dir.join("server.pem"), server_cert.pem())?;
    std::fs::write(dir.join("server.key"), server_key.serialize_pem())?;

    for client in args {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(vec![format!("{client}.clients.test")])?;
        params.subject_alt_names.push(SanType::Rfc822Name(
            format!("{client}@clients.test").try_into()?,
        ));
        params.distinguished_name = name(&client);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params.signed_by(&key, &issuer)?;
        std::fs::write(dir.join(format!("{client}.pem")), cert.pem())?;
        std::fs::write(dir.join(format!("{client}.key")), key.serialize_pem())?;
    }
    Ok(())
}

fn name(common_name: &str) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, common_name);
    name
}
