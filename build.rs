//! Compiles `proto/sigil/v1/*.proto` into the fenced `pb` module.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("sigil_v1_descriptor.bin"))
        // Secrets must never reach a Debug print: key material (ImportKeyRequest), access
        // tokens and authorization codes (SignIdTokenRequest, SignDpopProofRequest,
        // SignJarmRequest), personal data (SignIntrospectionRequest, SignUserinfoRequest) and
        // decrypted plaintext (DecryptJweResponse) get hand-written, redacting Debug impls in
        // the `pb` module.
        .skip_debug([
            "sigil.v1.ImportKeyRequest",
            "sigil.v1.SignIdTokenRequest",
            "sigil.v1.SignDpopProofRequest",
            "sigil.v1.SignJarmRequest",
            "sigil.v1.SignIntrospectionRequest",
            "sigil.v1.SignUserinfoRequest",
            // HTTP message signing: field values (Authorization, DPoP), target URIs, bodies,
            // and the signature base that repeats the covered values
            "sigil.v1.HttpField",
            "sigil.v1.SignHttpRequestRequest",
            "sigil.v1.SignHttpResponseRequest",
            "sigil.v1.SignHttpMessageResponse",
            "sigil.v1.DecryptJweResponse",
            // The subject and claims of access and logout tokens are personal data, a logout
            // token's sid names a live session, and a CIBA request's hints identify the user
            // while its client_notification_token is a bearer token.
            "sigil.v1.SignAccessTokenRequest",
            "sigil.v1.SignLogoutTokenRequest",
            "sigil.v1.SignCibaRequestRequest",
        ])
        .compile_protos(
            &[
                "proto/sigil/v1/keys.proto",
                "proto/sigil/v1/signing.proto",
                "proto/sigil/v1/decryption.proto",
            ],
            &["proto"],
        )?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
