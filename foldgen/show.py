"""``foldgen show``: a spec's derived math (`foldgen.build.describe`) as plain text,
Markdown or LaTeX.

The text is the module docstring's: prose lines, and indented lines of math. Markdown keeps
the math lines in ``text`` code blocks (they are Unicode math, aligned by spaces); LaTeX maps
the Unicode symbols to their commands, sets the math lines in ``align*`` (words in
``\\text``) and escapes the prose.
"""

from __future__ import annotations

import re

FORMATS = ("text", "markdown", "latex")

#: Unicode math of the docstrings → LaTeX (a character not here is kept: unicode-math).
LATEX_SYMBOLS = {
    "·": r"\cdot ", "≤": r"\le ", "≥": r"\ge ", "≠": r"\ne ", "≈": r"\approx ",
    "∇": r"\nabla ", "∂": r"\partial ", "²": "^{2}", "ᵀ": r"^{\top}", "⁻¹": "^{-1}",
    "Σ": r"\Sigma ", "Φ": r"\Phi ", "Ψ": r"\Psi ", "Π": r"\Pi ", "θ": r"\theta ",
    "λ": r"\lambda ", "ν": r"\nu ", "ρ": r"\rho ", "α": r"\alpha ", "β": r"\beta ",
    "γ": r"\gamma ", "δ": r"\delta ", "ε": r"\varepsilon ", "η": r"\eta ", "μ": r"\mu ",
    "σ": r"\sigma ", "τ": r"\tau ", "π": r"\pi ", "‖": r"\|", "∞": r"\infty ",
    "√": r"\sqrt ", "−": "-", "⊙": r"\odot ", "∘": r"\circ ", "×": r"\times ",
    "→": r"\to ", "↦": r"\mapsto ", "∈": r"\in ", "…": r"\ldots ", "⟨": r"\langle ",
    "⟩": r"\rangle ", "½": r"\tfrac12 ", "𝟙": r"\mathbf{1}", "ₓ": "_{x}", "ᵢ": "_{i}",
    "ⱼ": "_{j}", "₀": "_{0}", "₁": "_{1}", "₂": "_{2}", "ₖ": "_{k}",
}  # fmt: skip

_TEXT_ESCAPES = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
    "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
}  # fmt: skip


def _blocks(text: str) -> list[tuple[bool, list[str]]]:
    """Runs of lines: (True, math lines) or (False, prose). Math is indented and starts
    after a blank line; an indented line right after prose continues that prose."""
    out: list[tuple[bool, list[str]]] = []
    previous = ""
    for line in text.split("\n"):
        indented = line.startswith("    ")
        math = indented and (not previous.strip() or bool(out and out[-1][0]))
        if out and out[-1][0] == math and (line.strip() or math):
            out[-1][1].append(line)
        else:
            out.append((math, [line]))
        previous = line
    return out


def markdown(text: str) -> str:
    """The title as a heading, prose as paragraphs, math in ``text`` code blocks."""
    title, _, rest = text.partition("\n")
    parts = [f"# {title}"]
    for math, lines in _blocks(rest):
        if math:
            body = "\n".join(line[4:] for line in lines).rstrip()
            parts.append(f"```text\n{body}\n```")
        elif any(line.strip() for line in lines):
            parts.append("\n".join(lines).strip())
    return "\n\n".join(parts) + "\n"


def _latex_math(line: str) -> str:
    line = line.replace("⁻¹", "^{-1}")
    words = re.sub(r"\b([A-Za-z][A-Za-z]+(?: [a-z]+)*)\b", r"\\text{\1}", line.strip())
    return (
        "".join(LATEX_SYMBOLS.get(ch, ch) for ch in words)
        .replace("_", r"\_")
        .replace(r"\_{", "_{")
    )


def _latex_text(line: str) -> str:
    escaped = "".join(_TEXT_ESCAPES.get(ch, ch) for ch in line)
    return "".join(f"${LATEX_SYMBOLS[ch].strip()}$" if ch in LATEX_SYMBOLS else ch
                   for ch in escaped)  # fmt: skip


def latex(text: str) -> str:
    """A LaTeX fragment: the title as ``\\section*``, prose escaped, math in ``align*``."""
    title, _, rest = text.partition("\n")
    parts = [rf"\section*{{{_latex_text(title)}}}"]
    for math, lines in _blocks(rest):
        if math:
            rows = " \\\\\n".join(f"  &{_latex_math(line)}" for line in lines if line.strip())
            parts.append(f"\\begin{{align*}}\n{rows}\n\\end{{align*}}")
        elif any(line.strip() for line in lines):
            prose = [_latex_text(line.strip()) for line in lines if line.strip()]
            parts.append(" \\\\\n".join(prose))
    return "\n\n".join(parts) + "\n"


def render(text: str, fmt: str) -> str:
    """``text`` (a `describe` result) in the format ``fmt`` (one of `FORMATS`)."""
    if fmt == "markdown":
        return markdown(text)
    if fmt == "latex":
        return latex(text)
    return text + "\n"
