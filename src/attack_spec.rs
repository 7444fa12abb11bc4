//! Which attack to run, with what parameters, in two steps (linfa's params -> check -> valid
//! params): [`AttackParams`] is what a user gives (a method and optional settings, from the
//! command line or a request), [`AttackParams::check`] fills in the method's defaults and
//! validates them into an [`AttackSpec`]: one [`Attack`] variant carrying exactly its own
//! parameters. Manifests and reports record the spec, so they say what really ran.

use attacks::{AdaptiveKind, AdaptivePgd, Apgd, ApgdLoss, Ball, CarliniWagnerL2, DeepFool, Fgsm, Iterative, IterativeKind};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The attack methods, by the names of the command line, requests and manifests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum AttackName {
    Fgsm,
    Bim,
    Pgd,
    PgdL2,
    Mifgsm,
    ApgdCe,
    ApgdDlr,
    Cw,
    Deepfool,
    SelectivePgd,
    OrthogonalPgd,
    LagrangianPgd,
    ExtraClassPgd,
    PathMatchingPgd,
}

impl AttackName {
    pub const ALL: [AttackName; 14] = [
        AttackName::Fgsm,
        AttackName::Bim,
        AttackName::Pgd,
        AttackName::PgdL2,
        AttackName::Mifgsm,
        AttackName::ApgdCe,
        AttackName::ApgdDlr,
        AttackName::Cw,
        AttackName::Deepfool,
        AttackName::SelectivePgd,
        AttackName::OrthogonalPgd,
        AttackName::LagrangianPgd,
        AttackName::ExtraClassPgd,
        AttackName::PathMatchingPgd,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AttackName::Fgsm => "fgsm",
            AttackName::Bim => "bim",
            AttackName::Pgd => "pgd",
            AttackName::PgdL2 => "pgd-l2",
            AttackName::Mifgsm => "mifgsm",
            AttackName::ApgdCe => "apgd-ce",
            AttackName::ApgdDlr => "apgd-dlr",
            AttackName::Cw => "cw",
            AttackName::Deepfool => "deepfool",
            AttackName::SelectivePgd => "selective-pgd",
            AttackName::OrthogonalPgd => "orthogonal-pgd",
            AttackName::LagrangianPgd => "lagrangian-pgd",
            AttackName::ExtraClassPgd => "extra-class-pgd",
            AttackName::PathMatchingPgd => "path-matching-pgd",
        }
    }

    /// The methods that attack the detector too ([`attacks::AdaptivePgd`]); they need one.
    pub fn is_adaptive(self) -> bool {
        matches!(
            self,
            AttackName::SelectivePgd
                | AttackName::OrthogonalPgd
                | AttackName::LagrangianPgd
                | AttackName::ExtraClassPgd
                | AttackName::PathMatchingPgd
        )
    }

    /// Auto-PGD: no step size, always a random start, each image kept at its first success.
    fn is_apgd(self) -> bool {
        matches!(self, AttackName::ApgdCe | AttackName::ApgdDlr)
    }

    /// The methods that take steps inside an eps-ball and can stop each image early.
    fn is_iterative(self) -> bool {
        matches!(self, AttackName::Bim | AttackName::Pgd | AttackName::PgdL2 | AttackName::Mifgsm)
    }

    /// "fgsm, bim, ..." for error messages.
    pub fn list() -> String {
        AttackName::ALL.iter().map(|n| n.as_str()).collect::<Vec<_>>().join(", ")
    }
}

impl std::fmt::Display for AttackName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for AttackName {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        AttackName::ALL
            .into_iter()
            .find(|n| n.as_str() == s)
            .ok_or_else(|| Error::InvalidInput(format!("unknown attack method {s:?}; use one of {}", AttackName::list())))
    }
}

/// An attack as a user asks for it: unset settings take the method's default, settings the
/// method has no use for are refused by [`AttackParams::check`].
#[derive(Debug, Clone, PartialEq)]
pub struct AttackParams {
    pub method: AttackName,
    /// Budget: L-infinity radius, or L2 radius for pgd-l2 and adaptive attacks with norm l2.
    /// Unused by cw and deepfool, which minimise the L2 norm.
    pub eps: f64,
    pub steps: Option<usize>,
    pub step_size: Option<f64>,
    pub random_start: bool,
    pub seed: i64,
    pub target_class: Option<i64>,
    /// MI-FGSM momentum decay (default 1.0).
    pub decay: Option<f64>,
    /// C&W confidence kappa (default 0), initial constant c (default 1), Adam learning rate
    /// (default 0.01), binary-search steps on c (default 3).
    pub confidence: Option<f64>,
    pub initial_const: Option<f64>,
    pub learning_rate: Option<f64>,
    pub search_steps: Option<usize>,
    /// DeepFool overshoot (default 0.02).
    pub overshoot: Option<f64>,
    /// Iterative and adaptive attacks: stop each image at its first success (minimal,
    /// low-confidence adversarial examples).
    pub early_stop: bool,
    /// Adaptive attacks: the weight of the detector's loss (lagrangian-pgd) or of the path
    /// distance (path-matching-pgd), default 1.
    pub lambda: Option<f64>,
    /// Adaptive attacks and APGD: runs from a random start, keeping per image the best
    /// (default 1).
    pub restarts: Option<usize>,
    /// Adaptive attacks: the budget's norm (default L-infinity).
    pub norm: Option<Norm>,
}

impl AttackParams {
    /// The method's defaults for everything but `method` and `eps`.
    pub fn new(method: AttackName, eps: f64) -> Self {
        AttackParams {
            method,
            eps,
            steps: None,
            step_size: None,
            random_start: false,
            seed: 0,
            target_class: None,
            decay: None,
            confidence: None,
            initial_const: None,
            learning_rate: None,
            search_steps: None,
            overshoot: None,
            early_stop: false,
            lambda: None,
            restarts: None,
            norm: None,
        }
    }

    /// Fills in the method's defaults, refuses settings the method does not take, and checks
    /// every value by building the attack once.
    pub fn check(&self) -> Result<AttackSpec> {
        let m = self.method;
        let refuse = |what: &str, applies: &str| Err(Error::InvalidInput(format!("{what} to {applies}, not to {m}")));
        if !m.is_adaptive() && (self.lambda.is_some() || self.norm.is_some()) {
            return refuse("lambda and norm apply", "the adaptive attacks");
        }
        if !(m.is_adaptive() || m.is_apgd()) && self.restarts.is_some() {
            return refuse("restarts apply", "the adaptive attacks and apgd-ce, apgd-dlr");
        }
        if self.early_stop && !(m.is_iterative() || m.is_adaptive()) {
            return refuse("early stop applies", "the iterative attacks bim, pgd, pgd-l2 and mifgsm and the adaptive attacks");
        }
        if self.decay.is_some() && m != AttackName::Mifgsm {
            return refuse("decay applies", "mifgsm");
        }
        let cw_only = self.confidence.is_some() || self.initial_const.is_some() || self.learning_rate.is_some() || self.search_steps.is_some();
        if cw_only && m != AttackName::Cw {
            return refuse("confidence, initial const, learning rate and search steps apply", "cw");
        }
        if self.overshoot.is_some() && m != AttackName::Deepfool {
            return refuse("overshoot applies", "deepfool");
        }
        if (self.step_size.is_some() || self.random_start) && !(m.is_iterative() || m.is_adaptive()) {
            return refuse("step size and random start apply", "the iterative and adaptive attacks (apgd sets its own step and always starts at random)");
        }
        if m == AttackName::Fgsm && self.steps.is_some_and(|s| s != 1) {
            return refuse("more than one step applies", "bim, pgd and mifgsm (fgsm is one step)");
        }
        if m == AttackName::Deepfool && self.target_class.is_some() {
            return refuse("a target class applies", "the other attacks");
        }
        let attack = if m.is_adaptive() { self.adaptive()? } else { self.oblivious() };
        let spec = AttackSpec { attack, seed: self.seed, target_class: self.target_class };
        spec.build()?;
        Ok(spec)
    }

    fn iterative(&self) -> IterativeSteps {
        let steps = self.steps.unwrap_or(match self.method {
            AttackName::Pgd | AttackName::PgdL2 => 40,
            _ => 10,
        });
        // Madry et al.: 2.5 * eps / steps lets PGD walk across the ball; BIM and MI-FGSM use
        // eps / steps, as in their papers.
        let factor = if matches!(self.method, AttackName::Pgd | AttackName::PgdL2) { 2.5 } else { 1.0 };
        IterativeSteps {
            eps: self.eps,
            steps,
            step_size: self.step_size.unwrap_or((factor * self.eps / steps.max(1) as f64).max(1e-6)),
            random_start: self.random_start,
            early_stop: self.early_stop,
        }
    }

    fn oblivious(&self) -> Attack {
        match self.method {
            AttackName::Fgsm => Attack::Fgsm { eps: self.eps },
            AttackName::Bim => Attack::Bim(self.iterative()),
            AttackName::Pgd => Attack::Pgd(self.iterative()),
            AttackName::PgdL2 => Attack::PgdL2(self.iterative()),
            AttackName::Mifgsm => Attack::Mifgsm { steps: self.iterative(), decay: self.decay.unwrap_or(1.0) },
            AttackName::Cw => Attack::Cw {
                steps: self.steps.unwrap_or(100),
                search_steps: self.search_steps.unwrap_or(3),
                learning_rate: self.learning_rate.unwrap_or(0.01),
                confidence: self.confidence.unwrap_or(0.0),
                initial_const: self.initial_const.unwrap_or(1.0),
            },
            AttackName::Deepfool => Attack::Deepfool { steps: self.steps.unwrap_or(50), overshoot: self.overshoot.unwrap_or(0.02) },
            AttackName::ApgdCe => Attack::ApgdCe(self.apgd()),
            AttackName::ApgdDlr => Attack::ApgdDlr(self.apgd()),
            adaptive => unreachable!("{adaptive} is adaptive"),
        }
    }

    /// Croce & Hein's AutoAttack setting: 100 steps, one run.
    fn apgd(&self) -> ApgdSteps {
        ApgdSteps { eps: self.eps, steps: self.steps.unwrap_or(100), restarts: self.restarts.unwrap_or(1) }
    }

    fn adaptive(&self) -> Result<Attack> {
        let norm = self.norm.unwrap_or(Norm::Linf);
        // Step size eps/10 as in Bryniarski et al.; 100 steps walk the ball ten times.
        let steps = AdaptiveSteps {
            eps: self.eps,
            steps: self.steps.unwrap_or(100),
            step_size: self.step_size.unwrap_or((self.eps / 10.0).max(1e-6)),
            random_start: self.random_start,
            early_stop: self.early_stop,
            restarts: self.restarts.unwrap_or(1),
            norm,
        };
        let lambda = self.lambda.unwrap_or(1.0);
        if self.lambda.is_some() && !matches!(self.method, AttackName::LagrangianPgd | AttackName::PathMatchingPgd) {
            return Err(Error::InvalidInput(format!("lambda applies to lagrangian-pgd and path-matching-pgd, not to {}", self.method)));
        }
        Ok(match self.method {
            AttackName::SelectivePgd => Attack::SelectivePgd(steps),
            AttackName::OrthogonalPgd => Attack::OrthogonalPgd(steps),
            AttackName::LagrangianPgd => Attack::LagrangianPgd { steps, lambda },
            AttackName::ExtraClassPgd => Attack::ExtraClassPgd(steps),
            AttackName::PathMatchingPgd => Attack::PathMatchingPgd { steps, lambda },
            oblivious => unreachable!("{oblivious} is not adaptive"),
        })
    }
}

/// Steps inside an eps-ball, shared by the iterative attacks.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct IterativeSteps {
    pub eps: f64,
    pub steps: usize,
    pub step_size: f64,
    pub random_start: bool,
    /// Stop each image at its first success (minimal, low-confidence adversarial examples).
    pub early_stop: bool,
}

/// Steps of Auto-PGD (L-infinity; the step size is its own).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ApgdSteps {
    pub eps: f64,
    pub steps: usize,
    /// Runs from a random start on the images without a success yet.
    pub restarts: usize,
}

/// The norm of an adaptive attack's budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Norm {
    Linf,
    L2,
}

impl std::str::FromStr for Norm {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "linf" => Ok(Norm::Linf),
            "l2" => Ok(Norm::L2),
            other => Err(Error::InvalidInput(format!("norm {other:?} is not linf or l2"))),
        }
    }
}

/// Steps of a detector-aware PGD.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AdaptiveSteps {
    pub eps: f64,
    pub steps: usize,
    pub step_size: f64,
    pub random_start: bool,
    pub early_stop: bool,
    /// Runs from a random start, keeping per image the best.
    pub restarts: usize,
    pub norm: Norm,
}

/// One attack with exactly its own parameters (serialised with its name under `method`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "method", rename_all = "kebab-case")]
pub enum Attack {
    Fgsm { eps: f64 },
    Bim(IterativeSteps),
    Pgd(IterativeSteps),
    PgdL2(IterativeSteps),
    Mifgsm {
        #[serde(flatten)]
        steps: IterativeSteps,
        decay: f64,
    },
    /// Auto-PGD on the cross-entropy.
    ApgdCe(ApgdSteps),
    /// Auto-PGD on the difference-of-logits-ratio loss.
    ApgdDlr(ApgdSteps),
    Cw { steps: usize, search_steps: usize, learning_rate: f64, confidence: f64, initial_const: f64 },
    Deepfool { steps: usize, overshoot: f64 },
    SelectivePgd(AdaptiveSteps),
    OrthogonalPgd(AdaptiveSteps),
    LagrangianPgd {
        #[serde(flatten)]
        steps: AdaptiveSteps,
        /// Weight of the detector's loss.
        lambda: f64,
    },
    ExtraClassPgd(AdaptiveSteps),
    PathMatchingPgd {
        #[serde(flatten)]
        steps: AdaptiveSteps,
        /// Weight of the distance to the target class's paths.
        lambda: f64,
    },
}

impl Attack {
    pub fn name(&self) -> AttackName {
        match self {
            Attack::Fgsm { .. } => AttackName::Fgsm,
            Attack::Bim(_) => AttackName::Bim,
            Attack::Pgd(_) => AttackName::Pgd,
            Attack::PgdL2(_) => AttackName::PgdL2,
            Attack::Mifgsm { .. } => AttackName::Mifgsm,
            Attack::ApgdCe(_) => AttackName::ApgdCe,
            Attack::ApgdDlr(_) => AttackName::ApgdDlr,
            Attack::Cw { .. } => AttackName::Cw,
            Attack::Deepfool { .. } => AttackName::Deepfool,
            Attack::SelectivePgd(_) => AttackName::SelectivePgd,
            Attack::OrthogonalPgd(_) => AttackName::OrthogonalPgd,
            Attack::LagrangianPgd { .. } => AttackName::LagrangianPgd,
            Attack::ExtraClassPgd(_) => AttackName::ExtraClassPgd,
            Attack::PathMatchingPgd { .. } => AttackName::PathMatchingPgd,
        }
    }

    fn iterative_steps(&self) -> Option<&IterativeSteps> {
        match self {
            Attack::Bim(s) | Attack::Pgd(s) | Attack::PgdL2(s) | Attack::Mifgsm { steps: s, .. } => Some(s),
            _ => None,
        }
    }

    fn adaptive_steps(&self) -> Option<&AdaptiveSteps> {
        match self {
            Attack::SelectivePgd(s)
            | Attack::OrthogonalPgd(s)
            | Attack::ExtraClassPgd(s)
            | Attack::LagrangianPgd { steps: s, .. }
            | Attack::PathMatchingPgd { steps: s, .. } => Some(s),
            _ => None,
        }
    }

    /// Whether each image stops at its first success (minimal, low-confidence examples).
    pub fn stops_early(&self) -> bool {
        self.iterative_steps().map(|s| s.early_stop).or(self.adaptive_steps().map(|s| s.early_stop)).unwrap_or(false)
    }

    /// Gradient steps per image, all restarts and searches counted (what a server bounds).
    pub fn iterations(&self) -> usize {
        match self {
            Attack::Fgsm { .. } => 1,
            Attack::Cw { steps, search_steps, .. } => steps * search_steps.max(&1),
            Attack::Deepfool { steps, .. } => *steps,
            Attack::ApgdCe(s) | Attack::ApgdDlr(s) => s.steps * s.restarts.max(1),
            a => a
                .iterative_steps()
                .map(|s| s.steps)
                .or(a.adaptive_steps().map(|s| s.steps * s.restarts.max(1)))
                .expect("every other attack is iterative or adaptive"),
        }
    }

    /// "pgd eps 0.1 (40 steps)"-style description.
    pub fn describe(&self) -> String {
        let name = self.name();
        match self {
            Attack::Cw { confidence, steps, search_steps, .. } => {
                format!("cw kappa {confidence} ({steps} steps x {search_steps} searches)")
            }
            Attack::Deepfool { overshoot, .. } => format!("deepfool overshoot {overshoot}"),
            Attack::Fgsm { eps } => format!("fgsm eps {eps}"),
            Attack::ApgdCe(s) | Attack::ApgdDlr(s) => {
                let runs = if s.restarts > 1 { format!(" x {} restarts", s.restarts) } else { String::new() };
                format!("{name} eps {} ({} steps{runs})", s.eps, s.steps)
            }
            a => {
                let (eps, steps) = a
                    .iterative_steps()
                    .map(|s| (s.eps, s.steps))
                    .or(a.adaptive_steps().map(|s| (s.eps, s.steps)))
                    .expect("every other attack is iterative or adaptive");
                let stop = if a.stops_early() { ", early stop" } else { "" };
                if steps > 1 {
                    format!("{name} eps {eps} ({steps} steps{stop})")
                } else {
                    format!("{name} eps {eps}")
                }
            }
        }
    }
}

/// A checked attack: what [`AttackParams::check`] returns, what manifests record.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AttackSpec {
    #[serde(flatten)]
    pub attack: Attack,
    pub seed: i64,
    pub target_class: Option<i64>,
}

/// A built attack: one that sees the classifier only, or one that sees the detector too.
pub enum BuiltAttack {
    Oblivious(Box<dyn attacks::Attack>),
    Adaptive(AdaptivePgd),
}

impl BuiltAttack {
    pub fn name(&self) -> &'static str {
        match self {
            BuiltAttack::Oblivious(a) => a.name(),
            BuiltAttack::Adaptive(a) => a.name(),
        }
    }
}

impl AttackSpec {
    pub fn name(&self) -> AttackName {
        self.attack.name()
    }

    pub fn is_adaptive(&self) -> bool {
        self.name().is_adaptive()
    }

    pub fn describe(&self) -> String {
        self.attack.describe()
    }

    /// The attack itself, its constructors validating every value.
    pub fn build(&self) -> Result<BuiltAttack> {
        fn boxed<A: attacks::Attack + 'static>(
            attack: std::result::Result<A, attacks::AttackError>,
        ) -> std::result::Result<Box<dyn attacks::Attack>, attacks::AttackError> {
            attack.map(|a| Box::new(a) as Box<dyn attacks::Attack>)
        }
        let seed = self.seed;
        let iterative = |kind, s: &IterativeSteps| {
            Iterative::new(kind, s.eps, s.steps, s.step_size, s.random_start, seed).map(|a| a.with_early_stop(s.early_stop))
        };
        let adaptive = |kind, s: &AdaptiveSteps| {
            let ball = match s.norm {
                Norm::Linf => Ball::Linf,
                Norm::L2 => Ball::L2,
            };
            AdaptivePgd::new(kind, s.eps, s.steps, s.step_size, s.random_start, seed)
                .and_then(|a| a.with_ball(ball).with_restarts(s.restarts))
                .map(|a| BuiltAttack::Adaptive(a.with_early_stop(s.early_stop)))
        };
        let apgd = |loss, s: &ApgdSteps| Apgd::new(loss, s.eps, s.steps, seed).and_then(|a| a.with_restarts(s.restarts));
        let built = match &self.attack {
            Attack::Fgsm { eps } => boxed(Fgsm::new(*eps)).map(BuiltAttack::Oblivious),
            Attack::Bim(s) => boxed(iterative(IterativeKind::Bim, s)).map(BuiltAttack::Oblivious),
            Attack::Pgd(s) => boxed(iterative(IterativeKind::PgdLinf, s)).map(BuiltAttack::Oblivious),
            Attack::PgdL2(s) => boxed(iterative(IterativeKind::PgdL2, s)).map(BuiltAttack::Oblivious),
            Attack::Mifgsm { steps, decay } => {
                boxed(iterative(IterativeKind::MiFgsm { decay: *decay }, steps)).map(BuiltAttack::Oblivious)
            }
            Attack::Cw { steps, search_steps, learning_rate, confidence, initial_const } => {
                boxed(CarliniWagnerL2::new(*steps, *search_steps, *learning_rate, *confidence, *initial_const))
                    .map(BuiltAttack::Oblivious)
            }
            Attack::Deepfool { steps, overshoot } => boxed(DeepFool::new(*steps, *overshoot)).map(BuiltAttack::Oblivious),
            Attack::ApgdCe(s) => boxed(apgd(ApgdLoss::CrossEntropy, s)).map(BuiltAttack::Oblivious),
            Attack::ApgdDlr(s) => boxed(apgd(ApgdLoss::Dlr, s)).map(BuiltAttack::Oblivious),
            Attack::SelectivePgd(s) => adaptive(AdaptiveKind::Selective, s),
            Attack::OrthogonalPgd(s) => adaptive(AdaptiveKind::Orthogonal, s),
            Attack::LagrangianPgd { steps, lambda } => adaptive(AdaptiveKind::Lagrangian { lambda: *lambda }, steps),
            Attack::ExtraClassPgd(s) => adaptive(AdaptiveKind::ExtraClass, s),
            Attack::PathMatchingPgd { steps, lambda } => adaptive(AdaptiveKind::PathMatching { weight: *lambda }, steps),
        };
        built.map_err(Error::attack(format!("{} parameters", self.name())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_the_serialised_and_command_line_ones() {
        use clap::ValueEnum;
        assert_eq!(AttackName::value_variants().len(), AttackName::ALL.len());
        for name in AttackName::ALL {
            assert_eq!(serde_json::to_value(name).unwrap(), name.as_str());
            assert_eq!(name.to_possible_value().unwrap().get_name(), name.as_str());
            assert_eq!(name.as_str().parse::<AttackName>().unwrap(), name);
            let spec = AttackParams::new(name, 0.1).check().unwrap();
            assert_eq!(spec.name(), name);
            assert_eq!(serde_json::to_value(spec).unwrap()["method"], name.as_str());
        }
    }

    #[test]
    fn defaults_are_filled_in_and_recorded() {
        let pgd = AttackParams { steps: Some(20), ..AttackParams::new(AttackName::Pgd, 0.1) }.check().unwrap();
        let Attack::Pgd(s) = pgd.attack else { panic!("{pgd:?}") };
        assert_eq!((s.steps, s.random_start), (20, false));
        assert!((s.step_size - 2.5 * 0.1 / 20.0).abs() < 1e-12);
        let json = serde_json::to_value(pgd).unwrap();
        assert_eq!(json["steps"], 20);
        assert_eq!(serde_json::from_value::<AttackSpec>(json).unwrap(), pgd);
        let lagrangian = AttackParams::new(AttackName::LagrangianPgd, 0.1).check().unwrap();
        assert_eq!(lagrangian.attack.describe(), "lagrangian-pgd eps 0.1 (100 steps)");
        assert_eq!(serde_json::to_value(lagrangian).unwrap()["lambda"], 1.0);
    }

    #[test]
    fn settings_the_method_does_not_take_are_refused_by_name() {
        let cases = [
            (AttackParams { decay: Some(0.5), ..AttackParams::new(AttackName::Pgd, 0.1) }, "decay applies to mifgsm"),
            (AttackParams { early_stop: true, ..AttackParams::new(AttackName::Cw, 0.1) }, "early stop"),
            (AttackParams { lambda: Some(2.0), ..AttackParams::new(AttackName::Pgd, 0.1) }, "lambda"),
            (AttackParams { lambda: Some(2.0), ..AttackParams::new(AttackName::SelectivePgd, 0.1) }, "lambda applies to lagrangian-pgd"),
            (AttackParams { overshoot: Some(0.1), ..AttackParams::new(AttackName::Cw, 0.1) }, "overshoot"),
            (AttackParams { steps: Some(0), ..AttackParams::new(AttackName::Bim, 0.1) }, "bim parameters"),
            (AttackParams::new(AttackName::Pgd, -1.0), "pgd parameters"),
        ];
        for (params, expected) in cases {
            let err = params.check().unwrap_err().to_string();
            assert!(err.contains(expected), "{params:?}: {err}");
        }
        assert!("l1".parse::<Norm>().unwrap_err().to_string().contains("\"l1\" is not linf or l2"));
        assert!("jsma".parse::<AttackName>().unwrap_err().to_string().contains("fgsm, bim"));
    }

    #[test]
    fn apgd_takes_restarts_but_no_step_size() {
        let apgd = AttackParams { restarts: Some(2), ..AttackParams::new(AttackName::ApgdDlr, 0.1) }.check().unwrap();
        assert_eq!(apgd.attack, Attack::ApgdDlr(ApgdSteps { eps: 0.1, steps: 100, restarts: 2 }));
        assert_eq!(apgd.attack.iterations(), 200);
        assert_eq!(apgd.describe(), "apgd-dlr eps 0.1 (100 steps x 2 restarts)");
        let err = AttackParams { step_size: Some(0.01), ..AttackParams::new(AttackName::ApgdCe, 0.1) }.check().unwrap_err();
        assert!(err.to_string().contains("apgd sets its own step"), "{err}");
        let err = AttackParams { restarts: Some(2), ..AttackParams::new(AttackName::Pgd, 0.1) }.check().unwrap_err();
        assert!(err.to_string().contains("restarts apply to the adaptive attacks and apgd"), "{err}");
    }

    #[test]
    fn iterations_count_restarts_and_searches() {
        let adaptive = AttackParams { steps: Some(50), restarts: Some(3), ..AttackParams::new(AttackName::OrthogonalPgd, 0.1) };
        assert_eq!(adaptive.check().unwrap().attack.iterations(), 150);
        assert_eq!(AttackParams::new(AttackName::Cw, 0.0).check().unwrap().attack.iterations(), 300);
        let minimal = AttackParams { early_stop: true, ..AttackParams::new(AttackName::Pgd, 0.1) }.check().unwrap();
        assert!(minimal.attack.stops_early());
        assert_eq!(minimal.describe(), "pgd eps 0.1 (40 steps, early stop)");
    }
}
