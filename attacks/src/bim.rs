//! BIM (Kurakin et al. 2017): iterated FGSM steps from x itself, no random start, l_inf or
//! l_2 (l_2 radius eps * sqrt(D), step (1/255) * sqrt(D)).

crate::iterative::iterative_attack!(
    /// The BIM attack (`bim`, `bim-l2`).
    Bim, "bim", "bim-l2", random_start = false
);
