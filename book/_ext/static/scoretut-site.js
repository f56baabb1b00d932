// scoretut site script, added to every page by book/_ext/scoretut_site.py.
(function () {
  "use strict";

  // 1. Sidebar buttons. sphinx-book-theme 1.3 shows its own .primary-toggle and
  //    .secondary-toggle buttons in the article header; pydata-sphinx-theme 0.17 also
  //    renders a .primary-toggle in its (hidden) navbar and wires only the FIRST element
  //    of each class (document.querySelector), which is the hidden one. The book theme's
  //    desktop "collapse the sidebar" handler is attached to that same first element. So a
  //    click on any other toggle is forwarded to the first one of its class: on a phone it
  //    opens the sidebar dialog (chapter list / page contents), on a desktop it collapses
  //    or restores the primary sidebar.
  function wireToggles() {
    [".primary-toggle", ".secondary-toggle"].forEach(function (selector) {
      var buttons = document.querySelectorAll(selector);
      var wired = buttons[0];
      for (var i = 1; i < buttons.length; i++) {
        buttons[i].addEventListener("click", function (event) {
          event.preventDefault();
          event.stopPropagation();
          wired.click();
        });
      }
    });
  }

  // 2. Search snippets. Sphinx builds them from the page text, where math is still TeX
  //    source (MathJax typesets it in the browser). Turn the TeX in a snippet into plain
  //    text: \(c_\text{in} = 1/\sqrt{\sigma^2+1}\) -> c_in = 1/√(σ^2+1).
  var SYMBOLS = {
    alpha: "α", beta: "β", gamma: "γ", delta: "δ", epsilon: "ε", varepsilon: "ε",
    zeta: "ζ", eta: "η", theta: "θ", kappa: "κ", lambda: "λ", mu: "μ", nu: "ν", xi: "ξ",
    pi: "π", rho: "ρ", sigma: "σ", tau: "τ", phi: "φ", varphi: "φ", chi: "χ", psi: "ψ",
    omega: "ω", Gamma: "Γ", Delta: "Δ", Theta: "Θ", Lambda: "Λ", Sigma: "Σ", Phi: "Φ",
    Psi: "Ψ", Omega: "Ω", nabla: "∇", partial: "∂", infty: "∞", approx: "≈", sim: "~",
    le: "≤", leq: "≤", ge: "≥", geq: "≥", ne: "≠", neq: "≠", times: "×", cdot: "·",
    to: "→", rightarrow: "→", leftarrow: "←", Rightarrow: "⇒", mid: "|", in: "∈",
    sum: "Σ", int: "∫", prod: "∏", pm: "±", ell: "ℓ", dots: "…", ldots: "…", cdots: "⋯",
    propto: "∝", top: "ᵀ", log: "log", exp: "exp", min: "min", max: "max", ln: "ln"
  };
  function texToText(tex) {
    var s = tex;
    s = s.replace(/\\sqrt\s*\{([^{}]*)\}/g, "√($1)");
    s = s.replace(/\\(?:text|mathrm|mathbf|mathcal|mathbb|operatorname|boldsymbol|mathit)\s*\{([^{}]*)\}/g, "$1");
    s = s.replace(/\\(?:frac|tfrac|dfrac)\s*\{([^{}]*)\}\s*\{([^{}]*)\}/g, "($1)/($2)");
    s = s.replace(/\\([A-Za-z]+)/g, function (m, name) {
      return Object.prototype.hasOwnProperty.call(SYMBOLS, name) ? SYMBOLS[name] : "";
    });
    s = s.replace(/\\[,;:!> ]/g, " ").replace(/\\\\/g, " ").replace(/\\([{}_^%$&#|])/g, "$1");
    s = s.replace(/[{}]/g, "").replace(/&/g, " ").replace(/\s+/g, " ");
    return s.trim();
  }
  function plainMath(text) {
    return text
      .replace(/\\\(([\s\S]*?)\\\)/g, function (m, tex) { return texToText(tex); })
      .replace(/\\\[([\s\S]*?)\\\]/g, function (m, tex) { return texToText(tex); })
      .replace(/\$\$([\s\S]*?)\$\$/g, function (m, tex) { return texToText(tex); });
  }
  function patchSearch() {
    // searchtools.js declares `const Search` at the top level: a global binding, but not
    // a property of window.
    var search = typeof Search !== "undefined" ? Search : undefined;  // eslint-disable-line no-undef
    if (!search || !search.htmlToText || search.htmlToText.scoretutPlain) return;
    var original = search.htmlToText;
    search.htmlToText = function (htmlString, anchor) {
      return plainMath(original.call(this, htmlString, anchor));
    };
    search.htmlToText.scoretutPlain = true;
  }
  window.scoretutTexToText = texToText;  // used by tests/test_site.py

  patchSearch();
  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", function () { wireToggles(); patchSearch(); });
  } else {
    wireToggles();
    patchSearch();
  }
})();
