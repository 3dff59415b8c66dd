"""A second real corpus for the model-scale runs: Lilian Weng's posts of 2022-2025 on LLMs, as Markdown.

The posts live only as built HTML pages in github.com/lilianweng/lilianweng.github.io (``posts/NAME/index.html``);
this takes each page's title and article body (``div.post-content``) and writes them as Markdown with
markdownify (a benchmark-only dependency: ``pip install markdownify``). The posts are not part of this
repository.

    python benchmarks/lilianweng_posts.py SITE_GIT_DIR OUT [--commit REV] [--posts NAME ...]

Then, on a CPU machine: papertune ingest OUT --config benchmarks/raft_gpu.yaml --run-dir R, and copy
R/chunks.jsonl to .gpu-data/chunks.jsonl for benchmarks/gpu_raft.sh.
"""
import argparse
import subprocess
import sys
from pathlib import Path

POSTS = [
    "2022-04-15-data-gen",
    "2022-06-09-vlm",
    "2022-09-08-ntk",
    "2023-01-10-inference-optimization",
    "2023-03-15-prompt-engineering",
    "2023-06-23-agent",
    "2023-10-25-adv-attack-llm",
    "2024-02-05-human-data-quality",
    "2024-07-07-hallucination",
    "2024-11-28-reward-hacking",
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("site_git_dir", help="a git copy of lilianweng/lilianweng.github.io (bare or not)")
    parser.add_argument("out", type=Path)
    parser.add_argument("--commit", default="95ba34c", help="the site's commit the posts are read at")
    parser.add_argument("--posts", nargs="+", default=POSTS)
    args = parser.parse_args()
    try:
        from bs4 import BeautifulSoup
        from markdownify import markdownify
    except ImportError:
        sys.exit("needs markdownify and beautifulsoup4: pip install markdownify")
    args.out.mkdir(parents=True, exist_ok=True)
    for name in args.posts:
        html = subprocess.run(["git", "--git-dir", args.site_git_dir, "show", f"{args.commit}:posts/{name}/index.html"],
                              check=True, capture_output=True, text=True).stdout
        page = BeautifulSoup(html, "html.parser")
        title = page.find("h1", class_="post-title")
        body = page.find("div", class_="post-content")
        if title is None or body is None:
            sys.exit(f"{name}: no post title or post-content in the page; is it a post?")
        for anchor in body.select("a.anchor"):  # the heading's own link mark
            anchor.decompose()
        text = markdownify(str(body), heading_style="ATX", strip=["img"], escape_underscores=False,
                              escape_asterisks=False)  # LaTeX keeps its _ and *
        (args.out / f"{name}.md").write_text(f"# {title.get_text(strip=True)}\n\n{text.strip()}\n", encoding="utf-8")
        print(f"{name}.md: {len(text):,} characters")
    print(f"wrote {len(args.posts)} posts to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
