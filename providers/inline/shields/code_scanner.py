"""CodeShield's insecure-code rules run so that a failure is seen: imported only when inline::code-shield is built.

The rules are codeshield's (its regular expressions and semgrep rule files for the ``codeshield`` use case);
the running is ours. ``CodeShield.scan_code`` answers "secure" when its scan fails (it logs the exception
and returns the empty result), and the semgrep stage it runs can scan nothing without saying so (with
``--project-root /``, which it passes, semgrep 1.187 skips the file it was given and reports no findings). Here:

- every piece of code is matched against the regular expressions of its language (all of CodeShield's
  languages when its language is unknown), in a worker thread;
- one semgrep process scans every piece whose language has semgrep rules, from a private temporary folder,
  with a minimal environment (none of the server's variables or secrets), one job, and no metrics;
- semgrep must exit 0, print the JSON report, report no error, and list every file it was given as scanned;
  anything else, a rule set that loads empty, or the deadline passing (the semgrep process is killed) raises
  :class:`ScanFailed`, which the shield turns into a violation.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from codeshield.insecure_code_detector import insecure_patterns, languages, oss
from codeshield.insecure_code_detector.analyzers import Analyzer
from codeshield.insecure_code_detector.insecure_code_detector import LANGUAGE_ANALYZER_MAP
from codeshield.insecure_code_detector.insecure_patterns import InsecurePattern
from codeshield.insecure_code_detector.languages import Language
from codeshield.insecure_code_detector.usecases import UseCase

from .code_shield import CodePiece, Finding, ScanFailed

USECASE = UseCase.CODESHIELD
# What semgrep may print at most (its JSON report for bounded code is far smaller); more is a failure.
MAX_REPORT_BYTES = 16 * 1024 * 1024
# Semgrep error levels that leave the scan whole: a syntax error in the code is parsed around and reported as a warning.
HARMLESS_LEVELS = {"warn", "warning", "info"}
# Seconds the start-up probe of semgrep may take.
PROBE_TIMEOUT_S = 120.0
_COMMENT_STARTS = ("#", "//", "/*")


@dataclass(frozen=True)
class _Target:
    piece: CodePiece
    language: Language
    filename: str


def supported_languages() -> list[Language]:
    return list(languages.get_supported_languages())


class CodeScanner:
    def __init__(self) -> None:
        self.languages = supported_languages()
        self.patterns = {lang: insecure_patterns.load(lang, Analyzer.REGEX, USECASE) for lang in self.languages}
        self.semgrep_rules = {lang: path for lang in self.languages if (path := _semgrep_rules(lang)) is not None}
        # The command before the rule files and targets: codeshield's semgrep, minus its trailing --config.
        base = list(oss.SEMGREP_COMMAND)
        if base and base[-1] == "--config":
            base = base[:-1]
        self.command = [*base, "--jobs", "1"]
        self._check_rules()

    def _check_rules(self) -> None:
        """Codeshield logs and skips rule files it cannot read: a language left with no rule would pass everything."""
        empty = [lang.value for lang in self.languages if not self.patterns[lang] and lang not in self.semgrep_rules]
        if empty:
            raise ScanFailed(
                f"codeshield has no rules for {', '.join(empty)}: its rule files are missing or unreadable"
            )
        if not Path(self.command[0]).exists():
            raise ScanFailed(f"codeshield's semgrep binary {self.command[0]} is missing")

    async def prepare(self, rules_dir: Path, timeout_s: float = PROBE_TIMEOUT_S) -> list[str]:
        """Try each language's semgrep rules on an empty file; where semgrep refuses the file (codeshield's rules
        were written for another semgrep), try its rules one by one and use a copy in ``rules_dir`` without those
        semgrep cannot parse. Returns the ids of the rules left out. Raises :class:`ScanFailed` when semgrep
        cannot run the rules at all.

        Without this, one rule semgrep refuses would make every scan of its language fail (and fail closed).
        """
        try:
            return await asyncio.wait_for(self._prepare(rules_dir), timeout_s)
        except asyncio.TimeoutError:
            raise ScanFailed(f"semgrep did not finish trying its rules on empty files in {timeout_s:g}s") from None

    async def _prepare(self, rules_dir: Path) -> list[str]:
        await asyncio.to_thread(rules_dir.mkdir, parents=True, exist_ok=True)
        dropped = await asyncio.gather(*(self._usable_rules(lang, rules_dir) for lang in list(self.semgrep_rules)))
        # Every language's rules together, as a scan runs them: this one must pass as it is.
        await self._semgrep_report(
            [self._target(0, CodePiece("probe", lang.value, ""), lang) for lang in self.semgrep_rules]
        )
        return sorted(rule for rules in dropped for rule in rules)

    async def _usable_rules(self, language: Language, rules_dir: Path) -> list[str]:
        """The ids of ``language``'s rules semgrep cannot use, left out of the rule file used from now on."""
        path = self.semgrep_rules[language]
        problem = await self._problem(language, path)
        if problem is None:
            return []
        document = json.loads(await asyncio.to_thread(path.read_text, encoding="utf-8"))
        rules = list(document.get("rules", []))
        working: list[dict[str, Any]] = []
        dropped: list[dict[str, Any]] = []
        for index, rule in enumerate(rules):
            single = rules_dir / f"{language.value}-probe-{index}.json"
            await asyncio.to_thread(single.write_text, json.dumps({"rules": [rule]}), encoding="utf-8")
            usable = await self._problem(language, single) is None
            await asyncio.to_thread(single.unlink)
            (working if usable else dropped).append(rule)
        if not working or not dropped:
            raise ScanFailed(f"semgrep cannot use codeshield's {language.value} rules: {problem}")
        copy = rules_dir / path.name
        await asyncio.to_thread(copy.write_text, json.dumps({**document, "rules": working}), encoding="utf-8")
        self.semgrep_rules[language] = copy
        return [str(rule.get("id")) for rule in dropped]

    async def _problem(self, language: Language, rules: Path) -> str | None:
        """Why semgrep fails with ``rules`` on an empty file of ``language``; None when it does not."""
        target = self._target(0, CodePiece("probe", language.value, ""), language)
        try:
            await self._semgrep_report([target], {language: rules})
        except ScanFailed as exc:
            return str(exc)
        return None

    async def scan(self, pieces: list[CodePiece], timeout_s: float) -> list[Finding]:
        """Every finding in ``pieces``, or :class:`ScanFailed`; within ``timeout_s`` seconds."""
        targets = [
            self._target(index, piece, lang)
            for index, piece in enumerate(pieces)
            for lang in ([Language(piece.language)] if piece.language else self.languages)
        ]
        try:
            regex, semgrep = await asyncio.wait_for(self._both(targets), timeout_s)
        except asyncio.TimeoutError:  # the builtin TimeoutError from Python 3.11 on
            raise ScanFailed(f"the scan took longer than {timeout_s:g}s (timeout_s in the provider's config)") from None
        order = {piece.where: index for index, piece in enumerate(pieces)}
        return _unique([*regex, *semgrep], order)

    @staticmethod
    def _target(index: int, piece: CodePiece, language: Language) -> _Target:
        return _Target(piece, language, f"piece-{index}-{language.value}{languages.get_file_extension(language)}")

    async def _both(self, targets: list[_Target]) -> tuple[list[Finding], list[Finding]]:
        regex, semgrep = await asyncio.gather(
            asyncio.to_thread(self._regex_findings, targets), self._semgrep_findings(targets)
        )
        return regex, semgrep

    # ------------------------------------------------------------------------------------------- regex
    def _regex_findings(self, targets: list[_Target]) -> list[Finding]:
        findings = []
        for target in targets:
            for pattern in self.patterns[target.language]:
                line = _first_match_line(pattern, target.piece.code)
                if line is not None:
                    findings.append(
                        Finding(
                            where=target.piece.where,
                            line=line,
                            cwe_id=pattern.cwe_id or "",
                            pattern=pattern.pattern_id or pattern.rule,
                            description=pattern.description,
                            severity=str(pattern.severity).lower(),
                        )
                    )
        return findings

    # ----------------------------------------------------------------------------------------- semgrep
    async def _semgrep_findings(self, targets: list[_Target]) -> list[Finding]:
        scanned = [t for t in targets if t.language in self.semgrep_rules]
        if not scanned:
            return []
        report = await self._semgrep_report(scanned)
        by_file = {t.filename: t for t in scanned}
        findings = []
        for result in report.get("results", []):
            target = by_file.get(result.get("path", ""))
            if target is None:
                raise ScanFailed(f"semgrep reported a file it was not given: {str(result.get('path'))[:100]!r}")
            extra = result.get("extra") or {}
            metadata = extra.get("metadata") or {}
            findings.append(
                Finding(
                    where=target.piece.where,
                    line=(result.get("start") or {}).get("line"),
                    cwe_id=str(metadata.get("cwe_id") or ""),
                    pattern=str(result.get("check_id") or "semgrep rule"),
                    description=str(extra.get("message") or ""),
                    severity=str(extra.get("severity") or "").lower(),
                )
            )
        return findings

    async def _semgrep_report(
        self, scanned: list[_Target], rules: dict[Language, Path] | None = None
    ) -> dict[str, Any]:
        """Semgrep's report on ``scanned`` (with ``rules``, default the scanner's), checked: it ran, reported no
        error, and scanned every file."""
        rules = rules or self.semgrep_rules
        with tempfile.TemporaryDirectory(prefix="code-shield-") as folder:
            await asyncio.to_thread(_write_targets, Path(folder), scanned)
            configs = dict.fromkeys(str(rules[t.language]) for t in scanned)
            command = [*self.command, *(arg for path in configs for arg in ("--config", path))]
            status, output = await _run(command + [t.filename for t in scanned], Path(folder))
        if status != 0:
            said = output.decode("utf-8", "replace").strip().splitlines()
            raise ScanFailed(f"semgrep exited with status {status}: {(said[-1] if said else '')[:300]}")
        report = _report(output)
        missing = sorted({t.filename for t in scanned} - set(report.get("paths", {}).get("scanned", [])))
        if missing:
            raise ScanFailed(f"semgrep did not scan {', '.join(missing)} (it reported no error)")
        return report


def _semgrep_rules(language: Language) -> Path | None:
    if Analyzer.SEMGREP not in LANGUAGE_ANALYZER_MAP.get(language, []):
        return None
    path = oss.SEMGREP_RULE_REPO_PATH / "_generated_" / f"{language.value}_{USECASE.value}.json"
    return path if path.is_file() else None


def _first_match_line(pattern: InsecurePattern, code: str) -> int | None:
    """The line (1-based) of the pattern's first match outside a comment line, as CodeShield counts them."""
    for match in re.finditer(pattern.rule, code):
        before = code[: match.start()]
        line_start = before.rfind("\n") + 1
        prefix = before[line_start:].strip()
        if prefix.startswith(_COMMENT_STARTS) or prefix.endswith("*/"):
            continue
        return before.count("\n") + 1
    return None


def _write_targets(folder: Path, targets: list[_Target]) -> None:
    for target in targets:
        (folder / target.filename).write_text(target.piece.code, encoding="utf-8")


async def _run(command: list[str], folder: Path) -> tuple[int, bytes]:
    """Semgrep's exit status and output (its report, else what it said on stderr); killed, with its children,
    when the scan is cancelled or times out."""
    # A minimal environment: semgrep needs none of the server's variables, and must see none of its secrets.
    env = {"PATH": os.defpath, "HOME": str(folder), "LANG": "C.UTF-8", "SEMGREP_SEND_METRICS": "off"}
    try:
        process = await asyncio.create_subprocess_exec(
            *command,
            cwd=folder,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
    except OSError as exc:
        raise ScanFailed(f"semgrep could not be started: {exc.strerror or exc}") from None
    try:
        stdout, stderr = await process.communicate()
    finally:
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            await process.wait()
    if len(stdout) > MAX_REPORT_BYTES:
        raise ScanFailed(f"semgrep's report is larger than {MAX_REPORT_BYTES} bytes")
    return process.returncode or 0, stdout or stderr


def _report(output: bytes) -> dict[str, Any]:
    try:
        report = json.loads(output)
    except ValueError:
        raise ScanFailed(f"semgrep's output is not its JSON report: {output[:200]!r}") from None
    if not isinstance(report, dict):
        raise ScanFailed("semgrep's report is not a JSON object")
    errors = [e for e in report.get("errors", []) if str(e.get("level", "error")).lower() not in HARMLESS_LEVELS]
    if errors:
        raise ScanFailed(f"semgrep reported an error: {str(errors[0].get('message', errors[0]))[:300]}")
    return report


def _unique(findings: list[Finding], order: dict[str, int]) -> list[Finding]:
    """One finding per place and pattern (a piece scanned as several languages can match one rule twice)."""
    seen: dict[tuple[str, int | None, str, str], Finding] = {}
    for finding in findings:
        seen.setdefault((finding.where, finding.line, finding.cwe_id, finding.pattern), finding)
    return sorted(seen.values(), key=lambda f: (order.get(f.where, 0), f.line or 0, f.pattern))
