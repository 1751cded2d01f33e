"""Case 7: a SASL/SCRAM broker: the right credentials work; a wrong password is one clear line."""

from __future__ import annotations

from pulse.chaos import lab
from pulse.chaos.cases.common import WAIT_S, CaseResult, Context, fill, run_cli


def sasl_scram(ctx: Context) -> CaseResult:
    """A SASL/SCRAM broker: the right credentials work; a wrong password is one clear line."""
    import secrets

    from pydantic import SecretStr

    n = ctx.small
    result = CaseResult("7 SASL/SCRAM", "SCRAM-SHA-256 broker; then a wrong password")
    root = ctx.root / "case7"
    password, wrong = secrets.token_urlsafe(18), secrets.token_urlsafe(18)
    secure = ctx.base.model_copy(
        update={
            "kafka_security_protocol": "SASL_PLAINTEXT",
            "kafka_sasl_mechanism": "SCRAM-SHA-256",
            "kafka_sasl_username": "pulse-chaos",
            "kafka_sasl_password": SecretStr(password),
        }
    )
    problems: list[str] = []
    with lab.local_broker(secure, root / "broker", ctx.log) as kafka:
        s = ctx.stream_settings(kafka, "case7", n)
        lab.create_topic(s)
        stats = lab.Producer(s, lab.generate(n, ctx.seed), name="case7", seed=ctx.seed).result()
        stream = lab.Stream(s, root / "stream.log")
        stream.start(until_idle=True)
        stream.wait(WAIT_S)
        bad = s.model_copy(update={"kafka_sasl_password": SecretStr(wrong)})
        outputs: list[str] = []
        shop = root / "shop"  # `pulse produce` stops at the login, before reading a row
        shop.mkdir(parents=True, exist_ok=True)
        (shop / "transactions_train.csv").write_text(
            "t_dat,customer_id,article_id,price,sales_channel_id\n2020-01-01,c1,01,0.01,2\n"
        )
        for argv in (("topics", "create"), ("produce", f"hm:{shop}"), ("stream", "--until-idle")):
            code, out, err = run_cli(bad, *argv)
            outputs += [out, err]
            lines = [line for line in err.splitlines() if line.strip()]
            shown = lines[0] if lines else "(nothing)"
            result.notes.append(f"wrong password, `pulse {argv[0]}`: exit {code}, {shown!r}")
            clear = shown.startswith("pulse: error: SASL authentication failed:")
            clear = clear and "unreachable" not in shown
            if code == 0 or len(lines) != 1 or not clear:
                problems.append(f"`pulse {' '.join(argv)}` with a wrong password: {lines[:3]}")
        code, out, err = run_cli(s, "--help")
        outputs += [out, err]
    logs = [p for p in root.rglob("*") if p.is_file() and p.suffix in (".log", ".out")]
    texts = outputs + [p.read_text(errors="replace") for p in logs]
    for secret, name in ((password, "the password"), (wrong, "the wrong password")):
        leaks = [i for i, text in enumerate(texts) if secret in text]
        if leaks:
            problems.append(f"{name} appears in {len(leaks)} output(s) or log(s)")
    result.notes.append(
        f"neither password in `pulse --help`, the commands' output or {len(logs)} log files"
        if not problems
        else "; ".join(problems)
    )
    if problems:
        result.error = problems[0]
    result.produced = stats.delivered
    result.quarantined = len(lab.quarantine(s))
    result.lost += result.quarantined
    fill(result, s, lab.expected_ids(ctx.seed, n), ctx.spark())
    result.details = {"problems": problems, "log_files_scanned": len(logs)}
    return result
