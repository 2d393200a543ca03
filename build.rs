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
            "sigil.v1.DecryptJweResponse",
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
