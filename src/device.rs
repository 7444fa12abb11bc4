//! Choosing where tensors live.

use tch::Device;

use crate::error::{Error, Result};

/// Parses `auto`, `cpu`, `cuda` or `cuda:N`. `auto` takes the first GPU when CUDA works.
pub fn parse_device(spec: &str) -> Result<Device> {
    match spec {
        "auto" => Ok(Device::cuda_if_available()),
        "cpu" => Ok(Device::Cpu),
        "cuda" => cuda(0),
        other => match other.strip_prefix("cuda:").and_then(|i| i.parse::<usize>().ok()) {
            Some(i) => cuda(i),
            None => Err(Error::Device(format!(
                "unknown device {other:?}; use auto, cpu, cuda or cuda:N"
            ))),
        },
    }
}

fn cuda(index: usize) -> Result<Device> {
    let count = tch::Cuda::device_count() as usize;
    if !tch::Cuda::is_available() || index >= count {
        return Err(Error::Device(format!(
            "cuda:{index} requested but {count} CUDA device(s) are available to libtorch"
        )));
    }
    Ok(Device::Cuda(index))
}

/// A short human name for a device.
pub fn device_name(device: Device) -> String {
    match device {
        Device::Cpu => "cpu".into(),
        Device::Cuda(i) => format!("cuda:{i}"),
        other => format!("{other:?}").to_lowercase(),
    }
}
