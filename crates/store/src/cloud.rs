//! Object stores behind URLs: `s3://` (default feature `s3`), `gs://` (feature `gcs`) and `az://` /
//! `abfs://` (feature `azure`).
//!
//! Settings and credentials come from the standard places of each cloud, never from the job file, so
//! that no secret is hashed, logged or written into a manifest:
//! - S3: the `AWS_*` environment variables (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
//!   `AWS_SESSION_TOKEN`, `AWS_REGION`, `AWS_ENDPOINT_URL` for S3-compatible stores, ...), else the
//!   profile `AWS_PROFILE` (default `default`) of the AWS CLI's files (`~/.aws/credentials`,
//!   `~/.aws/config`, or `AWS_SHARED_CREDENTIALS_FILE` / `AWS_CONFIG_FILE`), else web identity,
//!   container credentials or the instance metadata service. A custom endpoint is addressed
//!   path-style, and over plain HTTP when its URL says `http://`.
//! - GCS: `GOOGLE_SERVICE_ACCOUNT` / `GOOGLE_APPLICATION_CREDENTIALS`, else the metadata service.
//! - Azure: `AZURE_STORAGE_ACCOUNT_NAME` with `AZURE_STORAGE_ACCOUNT_KEY`, a SAS token, or a managed
//!   identity.
//!
//! Every request is retried with exponential backoff on transient errors (connection failures, 5xx,
//! throttling) for up to `PADIM_STORE_RETRY_SECONDS` (default 120) per request.

use object_store::{BackoffConfig, ObjectStore, RetryConfig};
use std::sync::Arc;
use std::time::Duration;

/// The retry policy of every cloud request.
fn retry_config() -> Result<RetryConfig, String> {
    let seconds = match std::env::var("PADIM_STORE_RETRY_SECONDS") {
        Ok(text) => text
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|s| s.is_finite() && *s >= 0.0)
            .ok_or_else(|| format!("PADIM_STORE_RETRY_SECONDS must be a number of seconds, not `{text}`"))?,
        Err(_) => 120.0,
    };
    Ok(RetryConfig {
        backoff: BackoffConfig {
            init_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(8),
            base: 2.0,
        },
        max_retries: if seconds == 0.0 { 0 } else { 20 },
        retry_timeout: Duration::from_secs_f64(seconds),
    })
}

/// The store of a cloud URL's bucket (or container); the URL's path becomes the key prefix.
pub(crate) fn open(url: &url::Url) -> Result<Arc<dyn ObjectStore>, String> {
    match url.scheme() {
        "s3" | "s3a" => s3(url),
        "gs" => gcs(url),
        "az" | "azure" | "abfs" | "abfss" => azure(url),
        other => {
            Err(format!("the `{other}` scheme is not supported; use a local path, file://, s3://, gs:// or az://"))
        }
    }
}

#[cfg(feature = "s3")]
fn s3(url: &url::Url) -> Result<Arc<dyn ObjectStore>, String> {
    use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
    let mut builder = AmazonS3Builder::from_env().with_url(url.as_str()).with_retry(retry_config()?);
    let endpoint = builder.get_config_value(&AmazonS3ConfigKey::Endpoint);
    if let Some(endpoint) = &endpoint {
        // S3-compatible stores: path-style requests, plain HTTP only where the endpoint says so.
        builder = builder.with_virtual_hosted_style_request(false).with_allow_http(endpoint.starts_with("http://"));
    }
    let has_keys = builder.get_config_value(&AmazonS3ConfigKey::AccessKeyId).is_some();
    let profile = aws_profile::read()?;
    if !has_keys && let Some(credential) = profile.credential {
        let provider = object_store::StaticCredentialProvider::new(credential);
        builder = builder.with_credentials(Arc::new(provider));
    }
    let has_region = builder.get_config_value(&AmazonS3ConfigKey::Region).is_some()
        || std::env::var_os("AWS_DEFAULT_REGION").is_some();
    if !has_region && let Some(region) = profile.region {
        builder = builder.with_region(region);
    }
    let store = builder.build().map_err(|e| e.to_string())?;
    Ok(Arc::new(store))
}

#[cfg(not(feature = "s3"))]
fn s3(_: &url::Url) -> Result<Arc<dyn ObjectStore>, String> {
    Err("this padim was built without S3 support; rebuild with the `s3` feature (on by default)".into())
}

#[cfg(feature = "gcs")]
fn gcs(url: &url::Url) -> Result<Arc<dyn ObjectStore>, String> {
    let store = object_store::gcp::GoogleCloudStorageBuilder::from_env()
        .with_url(url.as_str())
        .with_retry(retry_config()?)
        .build()
        .map_err(|e| e.to_string())?;
    Ok(Arc::new(store))
}

#[cfg(not(feature = "gcs"))]
fn gcs(_: &url::Url) -> Result<Arc<dyn ObjectStore>, String> {
    Err("this padim was built without Google Cloud Storage support; rebuild with `--features gcs`".into())
}

#[cfg(feature = "azure")]
fn azure(url: &url::Url) -> Result<Arc<dyn ObjectStore>, String> {
    let store = object_store::azure::MicrosoftAzureBuilder::from_env()
        .with_url(url.as_str())
        .with_retry(retry_config()?)
        .build()
        .map_err(|e| e.to_string())?;
    Ok(Arc::new(store))
}

#[cfg(not(feature = "azure"))]
fn azure(_: &url::Url) -> Result<Arc<dyn ObjectStore>, String> {
    Err("this padim was built without Azure Blob Storage support; rebuild with `--features azure`".into())
}

/// The AWS CLI's shared profile files, read the way the AWS SDKs read them (static keys only; a
/// profile that assumes a role or uses SSO is left to the other providers).
#[cfg(feature = "s3")]
mod aws_profile {
    use object_store::aws::AwsCredential;
    use std::path::PathBuf;

    #[derive(Default)]
    pub(super) struct Profile {
        pub(super) credential: Option<AwsCredential>,
        pub(super) region: Option<String>,
    }

    fn file(variable: &str, default: &str) -> Option<PathBuf> {
        if let Some(path) = std::env::var_os(variable) {
            return Some(PathBuf::from(path));
        }
        std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".aws").join(default))
    }

    fn load(path: &std::path::Path) -> Result<Option<ini::Ini>, String> {
        if !path.is_file() {
            return Ok(None);
        }
        // The message names the file and the line, never a value.
        ini::Ini::load_from_file(path).map(Some).map_err(|e| match e {
            ini::Error::Io(e) => format!("cannot read {}: {e}", path.display()),
            ini::Error::Parse(e) => format!("{} is not a valid AWS profile file (line {})", path.display(), e.line),
        })
    }

    pub(super) fn read() -> Result<Profile, String> {
        let name = std::env::var("AWS_PROFILE").unwrap_or_else(|_| "default".into());
        read_from(
            &name,
            file("AWS_SHARED_CREDENTIALS_FILE", "credentials").as_deref(),
            file("AWS_CONFIG_FILE", "config").as_deref(),
        )
    }

    /// The profile `name` of these credentials and config files (either may be missing).
    pub(super) fn read_from(
        name: &str,
        credentials: Option<&std::path::Path>,
        config: Option<&std::path::Path>,
    ) -> Result<Profile, String> {
        let mut profile = Profile::default();
        if let Some(path) = credentials
            && let Some(ini) = load(path)?
            && let Some(section) = ini.section(Some(name))
            && let (Some(key_id), Some(secret_key)) =
                (section.get("aws_access_key_id"), section.get("aws_secret_access_key"))
        {
            profile.credential = Some(AwsCredential {
                key_id: key_id.to_string(),
                secret_key: secret_key.to_string(),
                token: section.get("aws_session_token").map(str::to_string),
            });
        }
        if let Some(path) = config
            && let Some(ini) = load(path)?
        {
            // ~/.aws/config names sections `profile NAME`, except `default`.
            let section_name = if name == "default" { name.to_string() } else { format!("profile {name}") };
            if let Some(section) = ini.section(Some(section_name.as_str())) {
                profile.region = section.get("region").map(str::to_string);
            }
        }
        Ok(profile)
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn profiles_as_the_aws_cli_writes_them() {
            let dir = tempfile::tempdir().unwrap();
            let credentials = dir.path().join("credentials");
            let config = dir.path().join("config");
            std::fs::write(
                &credentials,
                "[default]\naws_access_key_id = AKIADEFAULT\naws_secret_access_key = s1\n\n\
                 [ci]\naws_access_key_id = AKIACI\naws_secret_access_key = s2\naws_session_token = t2\n",
            )
            .unwrap();
            std::fs::write(&config, "[default]\nregion = eu-west-1\n[profile ci]\nregion = us-west-2\n").unwrap();
            let ci = read_from("ci", Some(&credentials), Some(&config)).unwrap();
            let credential = ci.credential.unwrap();
            assert_eq!((credential.key_id.as_str(), credential.secret_key.as_str()), ("AKIACI", "s2"));
            assert_eq!(credential.token.as_deref(), Some("t2"));
            assert_eq!(ci.region.as_deref(), Some("us-west-2"));
            let default = read_from("default", Some(&credentials), Some(&config)).unwrap();
            assert_eq!(default.credential.unwrap().key_id, "AKIADEFAULT");
            assert_eq!(default.region.as_deref(), Some("eu-west-1"));
            let none = read_from("absent", Some(&credentials), Some(&dir.path().join("nope"))).unwrap();
            assert!(none.credential.is_none() && none.region.is_none());
            // A broken file is an error naming the file and line, never a value.
            std::fs::write(&credentials, "[default\naws_secret_access_key = hush\n").unwrap();
            let message = read_from("default", Some(&credentials), None).err().unwrap();
            assert!(message.contains("credentials") && !message.contains("hush"), "{message}");
        }
    }
}
