//! `[identity]` in a configuration file: relative paths are the file's, the identity is read
//! when the mesh is built, and files that are not a usable identity stop the build with an error
//! naming the key and the file.

use meshlib::Mesh;
use meshlib_tests::mtls::{Pki, spiffe_id};

#[test]
fn the_identity_is_read_from_files_next_to_the_configuration() {
    let pki = Pki::new();
    pki.write(&pki.issue("reviews"), "reviews");
    let path = pki.dir().join("mesh.toml");
    std::fs::write(
        &path,
        "[identity]\ncert = \"reviews.pem\"\nkey = \"reviews-key.pem\"\nbundle = \"bundle.pem\"\n",
    )
    .unwrap();
    let mesh = Mesh::from_file(&path).unwrap();
    assert_eq!(
        mesh.identity().unwrap().spiffe_id().as_str(),
        spiffe_id("reviews")
    );

    // Another workload's key: the build stops, naming the key, its file and the certificate's.
    let other = pki.issue("ratings");
    std::fs::write(pki.dir().join("reviews-key.pem"), other.key_pem()).unwrap();
    let error = Mesh::from_file(&path).unwrap_err().to_string();
    let key = pki.dir().join("reviews-key.pem");
    let cert = pki.dir().join("reviews.pem");
    assert!(
        error.contains(&format!(
            "identity.key: {}: does not match the certificate in {}",
            key.display(),
            cert.display()
        )),
        "{error}"
    );

    std::fs::remove_file(pki.dir().join("bundle.pem")).unwrap();
    let error = Mesh::from_file(&path).unwrap_err().to_string();
    let bundle = pki.dir().join("bundle.pem");
    assert!(
        error.contains(&format!(
            "identity.bundle: {}: cannot read: ",
            bundle.display()
        )),
        "{error}"
    );
}
