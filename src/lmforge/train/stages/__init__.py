"""The stage recipes, one module per stage (each registered in config/stages.py): build the data, the model and the
trainer (or loop), train, save, report. `shared_setup` is what every stage after pt prepares the same way."""
