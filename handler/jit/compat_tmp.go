package jit

import "context"

// Temporary bridges while the domain moves to one RuleChange per NSG.

func (s *Service) putRule(ctx context.Context, nsg string, r SecurityRule) error {
	_, err := s.net.ApplyRules(ctx, nsg, RuleChange{Put: []SecurityRule{r}})
	return err
}

func (s *Service) deleteRule(ctx context.Context, nsg, name string) error {
	_, err := s.net.ApplyRules(ctx, nsg, RuleChange{Delete: []string{name}})
	return err
}

func (s *Service) applyRules(ctx context.Context, nsg string, put []SecurityRule, del []string) error {
	_, err := s.net.ApplyRules(ctx, nsg, RuleChange{Put: put, Delete: del})
	return err
}
