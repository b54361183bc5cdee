"""The application tier: the `memrec` command (`cli`), training and evaluation
runs (`training`, `runs`, `sources`), `memrec plan` (`planning`) and
`memrec saved-model-cli`."""
