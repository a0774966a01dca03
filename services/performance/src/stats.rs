//! The statistics behind experiment analysis, without I/O: the normal and Student t
//! distributions, the two-proportion z-test (conversion) and Welch's t-test (order value), each
//! with a 95% confidence interval of the difference.

/// The error function: its Maclaurin series near zero, elsewhere the Chebyshev fit of erfc
/// from Numerical Recipes (`erfcc`); accurate to about 1e-7, plenty for p-values shown to
/// three digits.
pub fn erf(x: f64) -> f64 {
    if x.abs() < 0.5 {
        // Maclaurin series: converges fast for small |x|, where the approximation is weakest.
        let mut sum = 0.0;
        let mut term = x;
        let mut n = 0.0_f64;
        while term.abs() > 1e-17 {
            sum += term / (2.0 * n + 1.0);
            n += 1.0;
            term *= -x * x / n;
        }
        return 2.0 / std::f64::consts::PI.sqrt() * sum;
    }
    let sign = x.signum();
    let x = x.abs();
    // erfc(x) = 1 - erf(x), relative error below 1.2e-7 everywhere.
    let t = 1.0 / (1.0 + 0.5 * x);
    let poly = -x * x - 1.265_512_23
        + t * (1.000_023_68
            + t * (0.374_091_96
                + t * (0.096_784_18
                    + t * (-0.186_288_06
                        + t * (0.278_868_07
                            + t * (-1.135_203_98
                                + t * (1.488_515_87 + t * (-0.822_152_23 + t * 0.170_872_77))))))));
    sign * (1.0 - t * poly.exp())
}

/// P(Z <= z) for a standard normal Z.
pub fn normal_cdf(z: f64) -> f64 {
    0.5 * (1.0 + erf(z / std::f64::consts::SQRT_2))
}

/// ln Γ(x) for x > 0 (Lanczos, g = 7).
fn ln_gamma(x: f64) -> f64 {
    const COEFFS: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        let pi = std::f64::consts::PI;
        return (pi / (pi * x).sin()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let mut a = COEFFS[0];
    let t = x + 7.5;
    for (i, c) in COEFFS.iter().enumerate().skip(1) {
        a += c / (x + i as f64);
    }
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + a.ln()
}

/// The continued fraction of the incomplete beta function (modified Lentz).
fn beta_fraction(a: f64, b: f64, x: f64) -> f64 {
    const TINY: f64 = 1e-300;
    let (qab, qap, qam) = (a + b, a + 1.0, a - 1.0);
    let mut c = 1.0;
    let mut d = 1.0 - qab * x / qap;
    if d.abs() < TINY {
        d = TINY;
    }
    d = 1.0 / d;
    let mut h = d;
    for m in 1..=300 {
        let m = f64::from(m);
        let m2 = 2.0 * m;
        let aa = m * (b - m) * x / ((qam + m2) * (a + m2));
        d = 1.0 + aa * d;
        if d.abs() < TINY {
            d = TINY;
        }
        c = 1.0 + aa / c;
        if c.abs() < TINY {
            c = TINY;
        }
        d = 1.0 / d;
        h *= d * c;
        let aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2));
        d = 1.0 + aa * d;
        if d.abs() < TINY {
            d = TINY;
        }
        c = 1.0 + aa / c;
        if c.abs() < TINY {
            c = TINY;
        }
        d = 1.0 / d;
        let delta = d * c;
        h *= delta;
        if (delta - 1.0).abs() < 1e-15 {
            break;
        }
    }
    h
}

/// The regularized incomplete beta function I_x(a, b).
pub fn incomplete_beta(a: f64, b: f64, x: f64) -> f64 {
    if x <= 0.0 {
        return 0.0;
    }
    if x >= 1.0 {
        return 1.0;
    }
    let front =
        (ln_gamma(a + b) - ln_gamma(a) - ln_gamma(b) + a * x.ln() + b * (1.0 - x).ln()).exp();
    if x < (a + 1.0) / (a + b + 2.0) {
        front * beta_fraction(a, b, x) / a
    } else {
        1.0 - front * beta_fraction(b, a, 1.0 - x) / b
    }
}

/// P(T <= t) for Student's t with `df` degrees of freedom (df may be fractional).
pub fn t_cdf(t: f64, df: f64) -> f64 {
    let tail = 0.5 * incomplete_beta(df / 2.0, 0.5, df / (df + t * t));
    if t >= 0.0 { 1.0 - tail } else { tail }
}

/// The t with P(T <= t) = p, by bisection on [`t_cdf`] (monotone, so bisection is safe).
pub fn t_quantile(p: f64, df: f64) -> f64 {
    let (mut lo, mut hi) = (-1e3, 1e3);
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if t_cdf(mid, df) < p {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    0.5 * (lo + hi)
}

/// z for a two-sided 95% interval.
pub const Z_95: f64 = 1.959_963_984_540_054;

/// A variant against the control: difference, 95% interval, statistic, p-value.
#[derive(Debug, Clone, PartialEq)]
pub struct Comparison {
    pub difference: f64,
    pub ci_low: f64,
    pub ci_high: f64,
    pub statistic: f64,
    pub p_value: f64,
    /// Welch–Satterthwaite degrees of freedom; `None` for the z-test.
    pub degrees_of_freedom: Option<f64>,
}

impl Comparison {
    pub fn significant(&self) -> bool {
        self.p_value < 0.05
    }
}

/// Two-proportion z-test of variant (x2 of n2) against control (x1 of n1): the statistic uses
/// the pooled proportion, the interval the unpooled standard error. `None` when either group
/// is empty or the pooled rate is 0 or 1 (no variance to test).
pub fn two_proportion_z_test(x1: u64, n1: u64, x2: u64, n2: u64) -> Option<Comparison> {
    if n1 == 0 || n2 == 0 {
        return None;
    }
    let (n1f, n2f) = (n1 as f64, n2 as f64);
    let (p1, p2) = (x1 as f64 / n1f, x2 as f64 / n2f);
    let pooled = (x1 + x2) as f64 / (n1f + n2f);
    let se_pooled = (pooled * (1.0 - pooled) * (1.0 / n1f + 1.0 / n2f)).sqrt();
    if se_pooled == 0.0 || !se_pooled.is_finite() {
        return None;
    }
    let difference = p2 - p1;
    let z = difference / se_pooled;
    let se = (p1 * (1.0 - p1) / n1f + p2 * (1.0 - p2) / n2f).sqrt();
    Some(Comparison {
        difference,
        ci_low: difference - Z_95 * se,
        ci_high: difference + Z_95 * se,
        statistic: z,
        p_value: (2.0 * (1.0 - normal_cdf(z.abs()))).clamp(0.0, 1.0),
        degrees_of_freedom: None,
    })
}

/// Mean and sample variance (n - 1) of a group.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    pub n: u64,
    pub mean: f64,
    pub variance: f64,
}

impl Sample {
    pub fn of(values: &[f64]) -> Self {
        let n = values.len() as u64;
        if n == 0 {
            return Self {
                n,
                mean: 0.0,
                variance: 0.0,
            };
        }
        let mean = values.iter().sum::<f64>() / n as f64;
        let variance = if n > 1 {
            values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64
        } else {
            0.0
        };
        Self { n, mean, variance }
    }
}

/// Welch's t-test of variant against control, with Welch–Satterthwaite degrees of freedom.
/// `None` with fewer than two values in a group or no variance at all.
pub fn welch_t_test(control: Sample, variant: Sample) -> Option<Comparison> {
    if control.n < 2 || variant.n < 2 {
        return None;
    }
    let a = control.variance / control.n as f64;
    let b = variant.variance / variant.n as f64;
    let se = (a + b).sqrt();
    if se == 0.0 || !se.is_finite() {
        return None;
    }
    let df = (a + b).powi(2) / (a * a / (control.n - 1) as f64 + b * b / (variant.n - 1) as f64);
    let difference = variant.mean - control.mean;
    let t = difference / se;
    let p_value = (2.0 * (1.0 - t_cdf(t.abs(), df))).clamp(0.0, 1.0);
    let q = t_quantile(0.975, df);
    Some(Comparison {
        difference,
        ci_low: difference - q * se,
        ci_high: difference + q * se,
        statistic: t,
        p_value,
        degrees_of_freedom: Some(df),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol
    }

    #[test]
    fn the_normal_cdf_matches_the_table() {
        assert!(close(normal_cdf(0.0), 0.5, 1e-9));
        assert!(close(normal_cdf(1.96), 0.975_002, 1e-6));
        assert!(close(normal_cdf(-1.0), 0.158_655, 1e-6));
        assert!(close(normal_cdf(2.58), 0.995_060, 1e-6));
        assert!(close(normal_cdf(0.3), 0.617_911, 1e-6));
    }

    #[test]
    fn the_t_cdf_matches_the_table() {
        // Critical values of Student's t (two-sided 95%): df 10 -> 2.228, df 30 -> 2.042.
        assert!(close(t_cdf(2.228_139, 10.0), 0.975, 1e-6));
        assert!(close(t_cdf(2.042_272, 30.0), 0.975, 1e-6));
        // df 1 is Cauchy: P(T <= 1) = 0.75.
        assert!(close(t_cdf(1.0, 1.0), 0.75, 1e-9));
        assert!(close(t_quantile(0.975, 10.0), 2.228_139, 1e-5));
        assert!(close(t_cdf(-2.0, 5.0), 0.050_970, 1e-6));
    }

    #[test]
    fn the_two_proportion_z_test_matches_the_textbook_example() {
        // 200/1000 against 250/1000: pooled 0.225, z = -0.05 / sqrt(0.225*0.775*0.002)
        // = -2.6774 (about -2.68), two-sided p = 0.00742 (about 0.007).
        let c = two_proportion_z_test(250, 1000, 200, 1000).expect("testable");
        assert!(close(c.statistic, -2.677_398, 1e-5), "{}", c.statistic);
        assert!(close(c.p_value, 0.007_420, 1e-5), "{}", c.p_value);
        assert!(close(c.difference, -0.05, 1e-12));
        // Unpooled SE sqrt(0.25*0.75/1000 + 0.2*0.8/1000) = 0.018641.
        assert!(close(c.ci_low, -0.05 - 1.959_964 * 0.018_641, 1e-5));
        assert!(close(c.ci_high, -0.05 + 1.959_964 * 0.018_641, 1e-5));
        assert!(c.significant());
        assert!(c.degrees_of_freedom.is_none());
    }

    #[test]
    fn a_z_test_without_variance_or_subjects_is_not_run() {
        assert!(two_proportion_z_test(0, 0, 1, 10).is_none());
        assert!(two_proportion_z_test(0, 10, 0, 10).is_none());
        assert!(two_proportion_z_test(10, 10, 10, 10).is_none());
    }

    #[test]
    fn welchs_t_test_matches_a_worked_example() {
        // Wikipedia "Welch's t-test" example 1:
        // A1 = {27.5, 21.0, 19.0, 23.6, 17.0, 17.9, 16.9, 20.1, 21.9, 22.6, 23.1, 19.6, 19.0,
        //       21.7, 21.4}, A2 = {27.1, 22.0, 20.8, 23.4, 23.4, 23.5, 25.8, 22.0, 24.8, 20.2,
        //       21.9, 22.1, 22.9, 20.5, 24.4}: t = -2.46 (A1 - A2), df = 24.99, p = 0.021.
        let a1 = Sample::of(&[
            27.5, 21.0, 19.0, 23.6, 17.0, 17.9, 16.9, 20.1, 21.9, 22.6, 23.1, 19.6, 19.0, 21.7,
            21.4,
        ]);
        let a2 = Sample::of(&[
            27.1, 22.0, 20.8, 23.4, 23.4, 23.5, 25.8, 22.0, 24.8, 20.2, 21.9, 22.1, 22.9, 20.5,
            24.4,
        ]);
        // Variant a1 against control a2, so the statistic is A1 - A2.
        let c = welch_t_test(a2, a1).expect("testable");
        assert!(close(c.statistic, -2.46, 5e-3), "{}", c.statistic);
        assert!(close(c.degrees_of_freedom.expect("df"), 24.99, 5e-3));
        assert!(close(c.p_value, 0.021, 1e-3), "{}", c.p_value);
        assert!(c.ci_low < c.difference && c.difference < c.ci_high && c.ci_high < 0.0);
        assert!(c.significant());
    }

    #[test]
    fn welch_needs_two_values_per_group() {
        let one = Sample::of(&[1.0]);
        let two = Sample::of(&[1.0, 2.0]);
        assert!(welch_t_test(one, two).is_none());
        let flat = Sample::of(&[3.0, 3.0]);
        assert!(welch_t_test(flat, flat).is_none());
    }
}
