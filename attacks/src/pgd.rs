//! PGD (Madry et al. 2018): BIM from a uniform random start in the ball, l_inf or l_2 (l_2 radius
//! eps * sqrt(D), step (1/255) * sqrt(D)).

crate::iterative::iterative_attack!(
    /// The PGD attack (`pgd`, `pgd-l2`).
    Pgd, "pgd", "pgd-l2", random_start = true
);
