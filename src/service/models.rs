//! The models one server serves, by name, each with its own workers. The first is the
//! default: a request that names no model gets it, and it also answers to the name
//! `pathguard` (the one name the server had before it served several), so clients written for
//! one model keep working.

use std::path::PathBuf;
use std::sync::Arc;

use tonic::Status;

use super::bounded::quoted;
use super::worker::Workers;
use crate::error::{Error, Result};

/// The name the default model also answers to.
pub const DEFAULT_ALIAS: &str = "pathguard";

/// Model versions: one per name (the checkpoint is the version; GetInfo gives its hash).
pub const MODEL_VERSION: &str = "1";

/// One `--model` value: `NAME=DIR`, or `DIR` named after its last path component.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelSpec {
    pub name: String,
    pub dir: PathBuf,
}

impl ModelSpec {
    pub fn parse(value: &str) -> Result<Self> {
        let (name, dir) = match value.split_once('=') {
            Some((name, dir)) => (name.to_string(), PathBuf::from(dir)),
            None => {
                let dir = PathBuf::from(value);
                let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                (name, dir)
            }
        };
        let valid = |c: char| c.is_ascii_alphanumeric() || "-_.".contains(c);
        if name.is_empty() || name.len() > 64 || !name.chars().all(valid) {
            return Err(Error::Config(format!(
                "--model {value}: model names are 1-64 letters, digits, '-', '_' or '.' (give NAME=DIR)"
            )));
        }
        Ok(ModelSpec { name, dir })
    }
}

/// Checks a server's model list: at least one, names unique, the alias left to the default.
pub fn check_specs(specs: &[ModelSpec]) -> Result<()> {
    if specs.is_empty() {
        return Err(Error::Config("no --model given".into()));
    }
    for (i, spec) in specs.iter().enumerate() {
        if specs[..i].iter().any(|s| s.name == spec.name) {
            return Err(Error::Config(format!("two models are named {:?}; name them with NAME=DIR", spec.name)));
        }
        if i > 0 && spec.name == DEFAULT_ALIAS {
            return Err(Error::Config(format!("{DEFAULT_ALIAS:?} names the first (default) model; choose another name")));
        }
    }
    Ok(())
}

/// Which of the models `names` a request for model `name` (and `version`, empty = any) gets:
/// "" and the alias are the first; an unknown name is NOT_FOUND listing the served ones.
pub fn resolve(names: &[String], name: &str, version: &str) -> std::result::Result<usize, Status> {
    let index = match name {
        "" => Some(0),
        _ => names.iter().position(|n| n == name).or((name == DEFAULT_ALIAS).then_some(0)),
    };
    let Some(index) = index.filter(|&i| i < names.len()) else {
        return Err(Status::not_found(format!(
            "model {} is not served here; the models are {:?} (the first also answers to {DEFAULT_ALIAS:?})",
            quoted(name),
            names
        )));
    };
    if !version.is_empty() && version != MODEL_VERSION {
        return Err(Status::not_found(format!("model {} has version {MODEL_VERSION} only, not {}", quoted(name), quoted(version))));
    }
    Ok(index)
}

/// The loaded models, in `--model` order.
pub struct Models {
    names: Vec<String>,
    workers: Vec<Arc<Workers>>,
}

impl Models {
    pub fn new(loaded: Vec<(String, Workers)>) -> Self {
        let (names, workers) = loaded.into_iter().map(|(n, w)| (n, Arc::new(w))).unzip();
        Models { names, workers }
    }

    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// The workers of model `name` (see [`resolve`]).
    pub fn get(&self, name: &str, version: &str) -> std::result::Result<&Arc<Workers>, Status> {
        self.get_named(name, version).map(|(_, workers)| workers)
    }

    /// The served name (an alias or "" resolved) and the workers of model `name`.
    pub fn get_named(&self, name: &str, version: &str) -> std::result::Result<(&str, &Arc<Workers>), Status> {
        resolve(&self.names, name, version).map(|i| (self.names[i].as_str(), &self.workers[i]))
    }

    pub fn all(&self) -> impl Iterator<Item = &Arc<Workers>> {
        self.workers.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_are_named_and_checked() {
        assert_eq!(ModelSpec::parse("models/robust").unwrap(), ModelSpec { name: "robust".into(), dir: "models/robust".into() });
        assert_eq!(ModelSpec::parse("r=models/robust").unwrap().name, "r");
        assert!(ModelSpec::parse("bad name=x").unwrap_err().to_string().contains("NAME=DIR"));
        assert!(ModelSpec::parse("/").is_err());
        let spec = |s: &str| ModelSpec::parse(s).unwrap();
        assert!(check_specs(&[spec("a=x"), spec("a=y")]).unwrap_err().to_string().contains("two models"));
        assert!(check_specs(&[spec("a=x"), spec("pathguard=y")]).is_err());
        check_specs(&[spec("pathguard=x"), spec("y")]).unwrap();
    }

    #[test]
    fn names_resolve_to_the_default_or_by_name() {
        let names = vec!["default".to_string(), "robust".to_string()];
        assert_eq!(resolve(&names, "", "").unwrap(), 0);
        assert_eq!(resolve(&names, "pathguard", "1").unwrap(), 0);
        assert_eq!(resolve(&names, "robust", "").unwrap(), 1);
        let missing = resolve(&names, "resnet", "").unwrap_err();
        assert_eq!(missing.code(), tonic::Code::NotFound);
        assert!(missing.message().contains("\"robust\""), "{}", missing.message());
        assert_eq!(resolve(&names, "robust", "2").unwrap_err().code(), tonic::Code::NotFound);
    }
}
