//! The one device seam. A model runs on the device the config names through one of the
//! backends here, chosen once when the stage starts; everything above (the training loop,
//! evaluation, `bench`, `predict`, `gpu-check`) calls `train_step` / `predict_logits` and
//! never asks which device it is on. A new device is a new variant in each enum below.

pub mod parity;

use std::path::Path;

use anyhow::{Context, Result};

use crate::config::{DeviceName, OptimizerName};
use crate::gpu::bert::GpuBert;
use crate::gpu::student::GpuStudent;
use crate::gpu::Gpu;
use crate::loss::{self, Targets};
use crate::models::bert::{BertForSequenceClassification, BertInput};
use crate::models::bert_inference::BertInference;
use crate::models::bilstm::{BiLstmStudent, StudentInput};
use crate::ops::dropout::DropoutRng;
use crate::ops::packed::{missing_instruction_note, Precision};
use crate::optim::{Optimizer, OptimizerConfig};
use crate::train::resume::TrainingState;

/// Whether `device` can be used on this machine; the error says what is missing.
pub fn device_present(device: DeviceName) -> Result<()> {
    match device {
        DeviceName::Cpu => Ok(()),
        DeviceName::Cuda => crate::gpu::driver_present(),
    }
}

/// A Bi-LSTM student being trained, with its optimizer, on one device. The host copy
/// (`model`) is what checkpoints are written from; [`StudentBackend::host_model`] brings it
/// up to date.
pub struct StudentBackend {
    model: BiLstmStudent,
    train_embeddings: bool,
    device: StudentDevice,
}

enum StudentDevice {
    Cpu { optimizer: Optimizer, trainable: Vec<bool>, dropout_rng: DropoutRng },
    Gpu(Box<GpuStudent>),
}

impl StudentBackend {
    /// `model` on `device`, trained with `optimizer`; `train_embeddings = false` freezes the
    /// embedding (parameter 0). `seed` drives the dropout masks.
    pub fn new(mut model: BiLstmStudent, optimizer: OptimizerConfig, train_embeddings: bool, device: DeviceName, seed: u64) -> Result<StudentBackend> {
        let device = match device {
            DeviceName::Cpu => {
                let trainable = model.params_mut().iter().enumerate().map(|(i, _)| i > 0 || train_embeddings).collect();
                StudentDevice::Cpu { optimizer: Optimizer::new(optimizer), trainable, dropout_rng: DropoutRng::new(seed) }
            }
            DeviceName::Cuda => {
                let gpu = Gpu::new()?;
                eprintln!("student: on the GPU ({})", gpu.name());
                StudentDevice::Gpu(Box::new(GpuStudent::new(gpu, &mut model, optimizer, seed)?))
            }
        };
        Ok(StudentBackend { model, train_embeddings, device })
    }

    /// `model` on `device` for inference only.
    pub fn for_inference(model: BiLstmStudent, device: DeviceName) -> Result<StudentBackend> {
        StudentBackend::new(model, OptimizerConfig::new(OptimizerName::Adadelta, 1.0), false, device, 0)
    }

    /// One optimizer step on a batch; returns its loss. A non-finite loss makes no update
    /// (the caller stops with advice). `max_grad_norm` > 0 clips the global gradient norm.
    pub fn train_step(&mut self, input: &StudentInput, labels: &[usize], targets: &Targets, max_grad_norm: f32) -> Result<f64> {
        match &mut self.device {
            StudentDevice::Cpu { optimizer, trainable, dropout_rng } => {
                let (logits, embedding) = self.model.forward_train(input, dropout_rng);
                let value = loss::loss(logits, labels, targets);
                // The embedding comes first in params_mut.
                let row_grads = |grads: &_| vec![Some(embedding.row_grads(grads))];
                Ok(optimizer.minimize(value, self.model.params_mut(), trainable, row_grads, max_grad_norm))
            }
            StudentDevice::Gpu(gpu) => Ok(gpu.train_step(input, labels, targets, max_grad_norm, self.train_embeddings)? as f64),
        }
    }

    /// Logits `[examples, labels]` without dropout.
    pub fn predict_logits(&self, input: &StudentInput) -> Result<Vec<f32>> {
        match &self.device {
            StudentDevice::Cpu { .. } => Ok(self.model.predict_logits(input)),
            StudentDevice::Gpu(gpu) => gpu.predict_logits(input),
        }
    }

    /// The host copy with the device's current weights (for checkpoints).
    pub fn host_model(&mut self) -> Result<&mut BiLstmStudent> {
        if let StudentDevice::Gpu(gpu) = &self.device {
            gpu.copy_to(&mut self.model)?;
        }
        Ok(&mut self.model)
    }

    /// Replaces the weights on the device with `model`'s (e.g. the best checkpoint).
    pub fn load_weights(&mut self, model: BiLstmStudent) -> Result<()> {
        self.model = model;
        if let StudentDevice::Gpu(gpu) = &mut self.device {
            gpu.copy_from(&mut self.model)?;
        }
        Ok(())
    }

    /// Writes the weights, optimizer state and dropout stream for resuming; false on a GPU,
    /// whose state stays on the device.
    pub fn save_state(&mut self, path: &Path) -> Result<bool> {
        match &mut self.device {
            StudentDevice::Cpu { optimizer, dropout_rng, .. } => {
                TrainingState { params: &mut self.model.params_mut(), optimizer, dropout_rng }.save(path)?;
                Ok(true)
            }
            StudentDevice::Gpu(_) => Ok(false),
        }
    }

    /// Continues from a file [`StudentBackend::save_state`] wrote.
    pub fn load_state(&mut self, path: &Path) -> Result<()> {
        match &mut self.device {
            StudentDevice::Cpu { optimizer, dropout_rng, .. } => {
                TrainingState { params: &mut self.model.params_mut(), optimizer, dropout_rng }.load(path)
            }
            StudentDevice::Gpu(_) => anyhow::bail!("a student on the GPU does not resume inside a stage"),
        }
    }

    pub fn model(&self) -> &BiLstmStudent {
        &self.model
    }

    /// "CPU", or the GPU's name.
    pub fn device_name(&self) -> String {
        match &self.device {
            StudentDevice::Cpu { .. } => "CPU".into(),
            StudentDevice::Gpu(gpu) => gpu.gpu().name(),
        }
    }
}

/// A teacher for inference (logits) on one device, in the precision asked for where the
/// device has it.
pub enum TeacherBackend {
    Cpu(Box<BertInference>),
    Gpu(Box<GpuBert>),
}

impl TeacherBackend {
    pub fn new(model: &BertForSequenceClassification, device: DeviceName, precision: Precision) -> Result<TeacherBackend> {
        match device {
            DeviceName::Cpu => {
                if let Some(note) = missing_instruction_note(precision) {
                    eprintln!("{note}");
                }
                Ok(TeacherBackend::Cpu(Box::new(BertInference::new(model, precision))))
            }
            DeviceName::Cuda => {
                if !precision.is_f32() {
                    eprintln!("note: teacher precision {:?} applies to the CPU; the GPU computes in f32", precision.name());
                }
                let gpu = GpuBert::new(Gpu::new()?, model).context("the teacher on the GPU")?;
                eprintln!("teacher: on the GPU ({})", gpu.gpu().name());
                Ok(TeacherBackend::Gpu(Box::new(gpu)))
            }
        }
    }

    /// The number formats teacher inference has on `device`, f32 first.
    pub fn precisions(device: DeviceName) -> &'static [Precision] {
        match device {
            DeviceName::Cpu => &[Precision::F32, Precision::Bf16, Precision::Int8],
            DeviceName::Cuda => &[Precision::F32],
        }
    }

    /// Logits `[batch, num_labels]`, row-major.
    pub fn predict_logits(&self, input: &BertInput) -> Result<Vec<f32>> {
        match self {
            TeacherBackend::Cpu(model) => Ok(model.logits(input)),
            TeacherBackend::Gpu(model) => model.predict_logits(input),
        }
    }

    pub fn num_labels(&self) -> usize {
        match self {
            TeacherBackend::Cpu(model) => model.num_labels(),
            TeacherBackend::Gpu(model) => model.num_labels(),
        }
    }

    /// "CPU", or the GPU's name.
    pub fn device_name(&self) -> String {
        match self {
            TeacherBackend::Cpu(_) => "CPU".into(),
            TeacherBackend::Gpu(model) => model.gpu().name(),
        }
    }
}
