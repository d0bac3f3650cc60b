"""GenieHive demo, part 3: a client that picks what to use from the gateway's model list.

    python docs/demo/client.py [--base-url http://127.0.0.1:8810/v1] [--role general_assistant]

It lists `/v1/models` with the ordinary `openai` package, keeps the chat entries whose
`offload_hint` says they are fit for small or background tasks, prefers the wanted role among
them (else the first such entry), sends it one question and prints the answer with the
gateway's routing headers. Exit status 1 when nothing fit is listed (the node not up yet).
"""

from __future__ import annotations

import argparse
import sys

import openai

# Hints meaning "loaded and answering fast enough to hand small jobs to".
FIT = ("good_for_low_complexity", "usable_for_background_tasks")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", default="http://127.0.0.1:8810/v1")
    parser.add_argument("--role", default="general_assistant", help="preferred model or role")
    parser.add_argument("--prompt", default="In one sentence: why is the sky blue?")
    parser.add_argument("--max-tokens", type=int, default=48)
    args = parser.parse_args()

    client = openai.OpenAI(base_url=args.base_url, api_key="open-mode", max_retries=0,
                           timeout=120)
    with client:
        entries = [model.to_dict() for model in client.models.list()]
        print(f"{len(entries)} models and roles listed:")
        fit = []
        for entry in entries:
            meta = entry.get("geniehive") or {}
            hint = meta.get("offload_hint")
            print(f"  {entry['id']:<24} {meta.get('route_type', '?'):<6} "
                  f"{','.join(meta.get('operations') or []):<16} {hint}")
            if "chat" in (meta.get("operations") or []) and hint in FIT:
                fit.append(entry)
        if not fit:
            print("nothing fit for small tasks is listed yet", file=sys.stderr)
            return 1
        chosen = next((e for e in fit if e["id"] == args.role), fit[0])
        print(f"picked: {chosen['id']} ({chosen['geniehive']['offload_hint']})")
        print(f"> {args.prompt}")
        raw = client.chat.completions.with_raw_response.create(
            model=chosen["id"], max_tokens=args.max_tokens,
            messages=[{"role": "user", "content": args.prompt}],
        )
        answer = raw.parse()
        print(f"< {answer.choices[0].message.content.strip()}")
        print(f"served by {raw.headers.get('x-geniehive-service')} "
              f"(model {raw.headers.get('x-geniehive-model')}, "
              f"route {raw.headers.get('x-geniehive-route')}, "
              f"attempts {raw.headers.get('x-geniehive-attempts')})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
